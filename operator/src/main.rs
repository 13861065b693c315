//! `virtmail-operator`: reconciles MailServer, MailDomain, Mailbox and MailAlias resources.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "virtmail-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the four CustomResourceDefinitions as YAML (or write one file each into --out).
    Crds {
        /// Write `mailservers.yaml`, `maildomains.yaml`, `mailboxes.yaml`, `mailaliases.yaml` here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds { out } => {
            let crds = virtmail_crds::crds();
            match out {
                Some(dir) => {
                    for (crd, file) in crds.iter().zip(virtmail_crds::CRD_FILES) {
                        let path = dir.join(file);
                        std::fs::write(&path, virtmail_crds::crd_yaml(crd))?;
                        eprintln!("wrote {}", path.display());
                    }
                }
                None => {
                    let mut stdout = std::io::stdout().lock();
                    for crd in &crds {
                        stdout.write_all(virtmail_crds::crd_yaml(crd).as_bytes())?;
                    }
                }
            }
        }
    }
    Ok(())
}
