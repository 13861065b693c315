//! Label selector matching (`matchLabels` and `matchExpressions`), as the apiserver does it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` match `selector`. An absent or empty selector matches everything.
/// An unknown operator matches nothing, so a typo never widens a selection.
pub fn matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|expr| {
        let value = labels.get(&expr.key);
        let values = expr.values.as_deref().unwrap_or_default();
        match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selector_matches_all() {
        assert!(matches(None, &labels(&[])));
        assert!(matches(
            Some(&LabelSelector::default()),
            &labels(&[("a", "b")])
        ));
    }

    #[test]
    fn match_labels_and_expressions() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("tier", "gold")]).into_iter().collect()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "region".into(),
                operator: "In".into(),
                values: Some(vec!["eu".into(), "us".into()]),
            }]),
        };
        assert!(matches(
            Some(&selector),
            &labels(&[("tier", "gold"), ("region", "eu")])
        ));
        assert!(!matches(
            Some(&selector),
            &labels(&[("tier", "gold"), ("region", "ap")])
        ));
        assert!(!matches(Some(&selector), &labels(&[("region", "eu")])));
        let bogus = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "x".into(),
                operator: "Bogus".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(!matches(Some(&bogus), &labels(&[("x", "1")])));
    }
}
