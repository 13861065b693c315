//! Reading virtmail resources from YAML manifests (`--resources DIR`, the standalone mode).
//!
//! Errors name the file, the object and the field, so a typo is found without guessing.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::compile::{Inputs, Kind, ObjectRef};
use crate::resources::{
    GROUP, MailAlias, MailDomain, MailServer, Mailbox, VERSION, valid_object_name,
};

/// Where an object was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The file.
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.document)
    }
}

/// A manifest that cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or directory cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// YAML syntax error.
    #[error("{file}: invalid YAML: {message}")]
    Yaml {
        /// The file.
        file: PathBuf,
        /// Parser message with line and column.
        message: String,
    },
    /// A document that is not a virtmail resource.
    #[error(
        "{at}: unknown kind {kind:?} with apiVersion {api_version:?} (expected {GROUP}/{VERSION} MailServer, MailDomain, Mailbox or MailAlias)"
    )]
    UnknownKind {
        /// Where.
        at: Source,
        /// `kind`.
        kind: String,
        /// `apiVersion`.
        api_version: String,
    },
    /// A field has the wrong type or a required field is missing.
    #[error("{at}: {object}: field {field}: {message}")]
    Field {
        /// Where.
        at: Source,
        /// `Kind/name` of the object.
        object: String,
        /// Path of the field, e.g. `spec.uid`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Two objects of one kind with the same name.
    #[error("{at}: {object} is defined twice (first in {first})")]
    Duplicate {
        /// Where the second is.
        at: Source,
        /// The object.
        object: ObjectRef,
        /// Where the first is.
        first: Source,
    },
}

/// Every virtmail object found in a set of manifests.
#[derive(Debug, Default, Clone)]
pub struct Resources {
    /// MailServers.
    pub servers: Vec<MailServer>,
    /// MailDomains.
    pub domains: Vec<MailDomain>,
    /// Mailboxes.
    pub mailboxes: Vec<Mailbox>,
    /// MailAliases.
    pub aliases: Vec<MailAlias>,
    /// Where each object came from.
    pub sources: Vec<(ObjectRef, Source)>,
}

impl Resources {
    /// Where an object was read from.
    pub fn source_of(&self, object: &ObjectRef) -> Option<&Source> {
        self.sources
            .iter()
            .find(|(o, _)| o == object)
            .map(|(_, s)| s)
    }

    /// Compiler inputs for `server`.
    pub fn inputs<'a>(&'a self, server: &'a MailServer) -> Inputs<'a> {
        Inputs {
            server,
            servers: (&self.servers).into(),
            domains: (&self.domains).into(),
            mailboxes: (&self.mailboxes).into(),
            aliases: (&self.aliases).into(),
        }
    }

    /// Choose the MailServer: the one named, the only one present, or a default named
    /// `default` with an empty spec when the manifests define none.
    pub fn server(&self, name: Option<&str>) -> Result<MailServer, String> {
        match name {
            Some(name) => self
                .servers
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name))
                .cloned()
                .ok_or_else(|| format!("no MailServer named {name:?} in the resources")),
            None => match self.servers.as_slice() {
                [] => Ok(MailServer::new("default", Default::default())),
                [only] => Ok(only.clone()),
                many => Err(format!(
                    "{} MailServers in the resources ({}): choose one with --server",
                    many.len(),
                    many.iter()
                        .filter_map(|s| s.metadata.name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            },
        }
    }

    /// Parse one YAML text (several documents allowed) and add its objects.
    pub fn add_yaml(&mut self, file: &Path, text: &str) -> Result<(), ManifestError> {
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let source = Source {
                file: file.to_path_buf(),
                document: index + 1,
            };
            let value =
                serde_yaml::Value::deserialize(document).map_err(|e| ManifestError::Yaml {
                    file: file.to_path_buf(),
                    message: e.to_string(),
                })?;
            if value.is_null() {
                continue;
            }
            self.add_value(source, value)?;
        }
        Ok(())
    }

    fn add_value(&mut self, source: Source, value: serde_yaml::Value) -> Result<(), ManifestError> {
        let text = |key: &str| {
            value
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let kind = text("kind");
        let api_version = text("apiVersion");
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("<unnamed>")
            .to_string();
        let expected_api = format!("{GROUP}/{VERSION}");
        let parsed_kind = match (kind.as_str(), api_version == expected_api) {
            ("MailServer", true) => Kind::MailServer,
            ("MailDomain", true) => Kind::MailDomain,
            ("Mailbox", true) => Kind::Mailbox,
            ("MailAlias", true) => Kind::MailAlias,
            _ => {
                return Err(ManifestError::UnknownKind {
                    at: source,
                    kind,
                    api_version,
                });
            }
        };
        let field_error = |field: String, message: String| ManifestError::Field {
            at: source.clone(),
            object: format!("{kind}/{name}"),
            field,
            message,
        };
        if name == "<unnamed>" {
            return Err(field_error("metadata.name".into(), "missing".into()));
        }
        if !valid_object_name(&name) {
            return Err(field_error(
                "metadata.name".into(),
                format!("{name:?} is not a valid name (lowercase letters, digits, '-' and '.')"),
            ));
        }
        let object = ObjectRef {
            kind: parsed_kind,
            name: name.clone(),
        };
        if let Some(first) = self.source_of(&object) {
            return Err(ManifestError::Duplicate {
                at: source,
                object,
                first: first.clone(),
            });
        }
        fn typed<T: for<'de> Deserialize<'de>>(
            value: serde_yaml::Value,
        ) -> Result<T, (String, String)> {
            serde_path_to_error::deserialize(value).map_err(|e| {
                let path = e.path().to_string();
                (
                    if path == "." { "(object)".into() } else { path },
                    e.into_inner().to_string(),
                )
            })
        }
        let result = match parsed_kind {
            Kind::MailServer => typed(value).map(|o| self.servers.push(o)),
            Kind::MailDomain => typed(value).map(|o| self.domains.push(o)),
            Kind::Mailbox => typed(value).map(|o| self.mailboxes.push(o)),
            Kind::MailAlias => typed(value).map(|o| self.aliases.push(o)),
        };
        result.map_err(|(field, message)| field_error(field, message))?;
        self.sources.push((object, source));
        Ok(())
    }
}

/// Every `*.yaml` / `*.yml` file below `dir`, sorted, recursively. Hidden entries (`.git`,
/// the kubelet's `..data`) are skipped.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ManifestError::Io { path, source }
    };
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let metadata = std::fs::metadata(&current).map_err(io(&current))?;
        if metadata.is_file() {
            files.push(current);
            continue;
        }
        for entry in std::fs::read_dir(&current).map_err(io(&current))? {
            let entry = entry.map_err(io(&current))?;
            let path = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Load every manifest below `dir` (or the single file `dir`).
pub fn load_dir(dir: &Path) -> Result<Resources, ManifestError> {
    let mut resources = Resources::default();
    for file in manifest_files(dir)? {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Io {
            path: file.clone(),
            source,
        })?;
        resources.add_yaml(&file, &text)?;
    }
    Ok(resources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_field_type_names_file_object_and_field() {
        let yaml = "apiVersion: virtmail.io/v1alpha1\nkind: Mailbox\nmetadata: {name: bob}\nspec:\n  address: bob@example.test\n  uid: lots\n";
        let err = load_error("x.yaml", yaml);
        assert!(err.contains("x.yaml"), "{err}");
        assert!(err.contains("Mailbox/bob"), "{err}");
        assert!(err.contains("spec.uid"), "{err}");
    }

    /// The error of loading one file `name` of text `yaml`.
    fn load_error(name: &str, yaml: &str) -> String {
        let mut resources = Resources::default();
        let error = resources.add_yaml(Path::new(name), yaml).unwrap_err();
        error.to_string()
    }

    #[test]
    fn multi_document_and_empty_documents() {
        let mut r = Resources::default();
        let yaml = "---\napiVersion: virtmail.io/v1alpha1\nkind: MailDomain\nmetadata: {name: d}\nspec: {domain: d.test, postmaster: a@d.test}\n---\n---\napiVersion: virtmail.io/v1alpha1\nkind: Mailbox\nmetadata: {name: a}\nspec: {address: a@d.test}\n";
        r.add_yaml(Path::new("m.yaml"), yaml).unwrap();
        assert_eq!(r.domains.len(), 1);
        assert_eq!(r.mailboxes.len(), 1);
        assert_eq!(
            r.source_of(&ObjectRef {
                kind: Kind::Mailbox,
                name: "a".into()
            })
            .unwrap()
            .document,
            3
        );
    }

    #[test]
    fn load_errors_name_the_file_and_what_is_wrong() {
        for (file, yaml, expected) in [
            (
                "cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
                "unknown kind \"ConfigMap\"",
            ),
            (
                "d.yaml",
                "apiVersion: virtmail.io/v1alpha1\nkind: MailDomain\nmetadata: {name: d}\nspec: {domain: d.test}\n",
                "postmaster",
            ),
            ("bad.yaml", "a: [", "bad.yaml: invalid YAML"),
        ] {
            let err = load_error(file, yaml);
            assert!(err.contains(expected), "{err}");
            assert!(err.starts_with(file), "{err}");
        }
    }

    /// Found by fuzzing (`resources_yaml`): a MailServer named `mail kind` loaded, and its
    /// directory could not go through the ConfigMap encoding. The apiserver refuses such names.
    #[test]
    fn object_name_the_apiserver_would_refuse_is_an_error() {
        for name in ["\"mail kind\"", "Mail", "a/b", "a_b", "-a", "a.", "\"\""] {
            for kind in ["MailServer", "Mailbox"] {
                let mut r = Resources::default();
                let yaml = format!(
                    "apiVersion: virtmail.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {{address: a@d.test}}\n"
                );
                let err = r
                    .add_yaml(Path::new("n.yaml"), &yaml)
                    .expect_err(&yaml)
                    .to_string();
                assert!(err.contains("field metadata.name"), "{err}");
            }
        }
        let mut r = Resources::default();
        let yaml = "apiVersion: virtmail.io/v1alpha1\nkind: MailServer\nmetadata: {name: mail-1.example}\nspec: {}\n";
        r.add_yaml(Path::new("ok.yaml"), yaml).unwrap();
    }
}
