//! Kubernetes label selectors (`app=kubenurse,tier in (a,b),!legacy`), parsed up front so a
//! typo in `KUBENURSE_NEIGHBOUR_FILTER` fails at start instead of silently matching nothing.

use std::collections::BTreeMap;
use std::fmt;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value` (also matches pods without the key, as in Kubernetes).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)`.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// Why a selector string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector: {0}")]
pub struct SelectorError(String);

impl LabelSelector {
    /// Parses the Kubernetes selector syntax (equality- and set-based).
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for part in split_top_level(input)? {
            let part = part.trim();
            if part.is_empty() {
                if input.trim().is_empty() {
                    continue;
                }
                return Err(SelectorError("empty requirement (stray comma?)".into()));
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(Self { requirements })
    }

    /// Whether a set of labels satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// Whether an object with `labels` (`None`: it has none) satisfies every requirement.
    pub fn matches_labels_of(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        match labels {
            Some(labels) => self.matches(labels),
            None => self.matches(&BTreeMap::new()),
        }
    }

    /// Whether this selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn split_top_level(input: &str) -> Result<Vec<&str>, SelectorError> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or_else(|| SelectorError("unbalanced ')'".into()))?,
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError("unbalanced '('".into()));
    }
    parts.push(&input[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<Requirement, SelectorError> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(valid_key(key.trim())?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(valid_key(k.trim())?, valid_value(v.trim())?));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(valid_key(k.trim())?, valid_value(v.trim())?));
    }
    let mut words = part.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    let rest = words.next().map(str::trim_start).unwrap_or_default();
    if rest.is_empty() {
        return Ok(Requirement::Exists(valid_key(key)?));
    }
    let (op, list) = if let Some(list) = rest.strip_prefix("notin") {
        ("notin", list)
    } else if let Some(list) = rest.strip_prefix("in") {
        ("in", list)
    } else {
        return Err(SelectorError(format!("unknown operator in {part:?}")));
    };
    let list = list.trim();
    let inner = list
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or_else(|| SelectorError(format!("expected '(values)' after {op} in {part:?}")))?;
    let values = inner.split(',').map(|v| valid_value(v.trim())).collect::<Result<Vec<_>, _>>()?;
    let key = valid_key(key)?;
    Ok(if op == "in" { Requirement::In(key, values) } else { Requirement::NotIn(key, values) })
}

/// Label keys: optional DNS-subdomain prefix and a name of `[A-Za-z0-9._-]`, ≤ 63 chars.
fn valid_key(key: &str) -> Result<String, SelectorError> {
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty()
                || prefix.len() > 253
                || !prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            {
                return Err(SelectorError(format!("invalid key prefix in {key:?}")));
            }
            name
        }
        None => key,
    };
    if name.is_empty() || name.len() > 63 || !label_chars(name) {
        return Err(SelectorError(format!("invalid label key {key:?}")));
    }
    Ok(key.to_string())
}

fn valid_value(value: &str) -> Result<String, SelectorError> {
    if value.len() > 63 || !(value.is_empty() || label_chars(value)) {
        return Err(SelectorError(format!("invalid label value {value:?}")));
    }
    Ok(value.to_string())
}

fn label_chars(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.')) && s.starts_with(alnum) && s.ends_with(alnum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_and_matches() {
        let s = LabelSelector::parse("app.kubernetes.io/name=kubenurse, tier in (a, b),!legacy").unwrap();
        assert!(s.matches(&labels(&[("app.kubernetes.io/name", "kubenurse"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("app.kubernetes.io/name", "kubenurse"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[("app.kubernetes.io/name", "kubenurse"), ("tier", "a"), ("legacy", "")])));
        let ne = LabelSelector::parse("env!=prod,zone notin (x)").unwrap();
        assert!(ne.matches(&labels(&[])));
        assert!(!ne.matches(&labels(&[("env", "prod")])));
        assert!(LabelSelector::parse("").unwrap().is_empty());
        assert_eq!(LabelSelector::parse("a==b").unwrap().to_string(), "a=b");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["app=", "=x", "a,,b", "a in b", "a in (b", "a)(", "a b", "-a=b", "a=b c", "a=$"] {
            if bad == "app=" {
                // an empty value is legal in Kubernetes
                assert!(LabelSelector::parse(bad).is_ok());
                continue;
            }
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
