//! The knowledge base file: anomaly concepts per domain, validated on load.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use kka_shared::prompt::OperationFamily;
use serde::Deserialize;

use super::{Concept, KnowledgeError};

/// The built-in knowledge base, compiled in.
pub const BUILTIN_TOML: &str = include_str!("../../../config/knowledge.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KnowledgeFile {
    domains: BTreeMap<String, DomainEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainEntry {
    default_families: Vec<OperationFamily>,
    concepts: Vec<ConceptEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConceptEntry {
    id: String,
    description: String,
    operation: String,
    #[serde(default)]
    params: BTreeMap<String, f64>,
    family: Option<OperationFamily>,
    severity: Option<f64>,
    #[serde(default)]
    classes: Vec<String>,
}

/// Concepts of one domain.
#[derive(Debug, Clone, PartialEq)]
pub struct Domain {
    pub name: String,
    /// Families used when `knowledge.families` is empty.
    pub default_families: Vec<OperationFamily>,
    pub concepts: Vec<DomainConcept>,
}

/// A concept and the classes it applies to.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainConcept {
    pub concept: Concept,
    /// Class names, compared without case. Empty means every class.
    pub classes: Vec<String>,
}

impl DomainConcept {
    fn applies_to(&self, class_names: &[String]) -> bool {
        self.classes.is_empty()
            || self.classes.iter().any(|class| class_names.iter().any(|name| name.eq_ignore_ascii_case(class)))
    }
}

/// A validated knowledge base.
#[derive(Debug, Clone, PartialEq)]
pub struct KnowledgeBase {
    /// Origin of the base for error messages: a path or "built-in knowledge base".
    pub origin: String,
    pub domains: BTreeMap<String, Domain>,
}

impl KnowledgeBase {
    /// Parse the compiled-in base from `config/knowledge.toml`.
    pub fn builtin() -> Result<KnowledgeBase, KnowledgeError> {
        KnowledgeBase::parse(BUILTIN_TOML, "built-in knowledge base")
    }

    /// Read and validate a knowledge base file.
    pub fn from_path(path: &Path) -> Result<KnowledgeBase, KnowledgeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KnowledgeError::ReadBase { path: path.to_owned(), source })?;
        KnowledgeBase::parse(&text, &path.display().to_string())
    }

    /// Load the base in `knowledge.path`, or the built-in one when the path is unset.
    pub fn load(path: Option<&Path>) -> Result<KnowledgeBase, KnowledgeError> {
        match path {
            Some(path) => KnowledgeBase::from_path(path),
            None => KnowledgeBase::builtin(),
        }
    }

    /// Parse and validate TOML text. `origin` names the text in errors.
    pub fn parse(text: &str, origin: &str) -> Result<KnowledgeBase, KnowledgeError> {
        let file: KnowledgeFile = toml::from_str(text)
            .map_err(|error| KnowledgeError::ParseBase { origin: origin.to_owned(), reason: error.to_string() })?;

        let mut seen_ids = BTreeSet::new();
        let mut domains = BTreeMap::new();
        for (name, entry) in file.domains {
            let domain = validate_domain(origin, &name, entry, &mut seen_ids)?;
            domains.insert(name, domain);
        }
        Ok(KnowledgeBase { origin: origin.to_owned(), domains })
    }

    /// Select the concepts of `domain` in `families` that apply to one of `class_names`, with
    /// `{class}` replaced by the class names joined with " or ". Empty `families` means the
    /// domain's default families.
    pub fn select(
        &self,
        domain: &str,
        class_names: &[String],
        families: &[OperationFamily],
    ) -> Result<Vec<Concept>, KnowledgeError> {
        let Some(entry) = self.domains.get(domain) else {
            return Err(KnowledgeError::UnknownDomain {
                domain: domain.to_owned(),
                origin: self.origin.clone(),
                known: self.domains.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        let families = if families.is_empty() { &entry.default_families[..] } else { families };
        let class_label = class_names.join(" or ");

        let concepts: Vec<Concept> = entry
            .concepts
            .iter()
            .filter(|candidate| families.contains(&candidate.concept.family) && candidate.applies_to(class_names))
            .map(|candidate| candidate.concept.for_class(&class_label))
            .collect();
        if concepts.is_empty() {
            return Err(KnowledgeError::NoConcepts {
                domain: domain.to_owned(),
                families: families.iter().map(|family| family.as_str()).collect::<Vec<_>>().join(", "),
                classes: class_label,
            });
        }
        Ok(concepts)
    }
}

fn validate_domain(
    origin: &str,
    name: &str,
    entry: DomainEntry,
    seen_ids: &mut BTreeSet<String>,
) -> Result<Domain, KnowledgeError> {
    if entry.default_families.is_empty() {
        return Err(KnowledgeError::InvalidDomain {
            origin: origin.to_owned(),
            domain: name.to_owned(),
            reason: "default_families is empty; list \"local\", \"global\" or both".into(),
        });
    }

    let mut concepts = Vec::with_capacity(entry.concepts.len());
    for concept in entry.concepts {
        if !seen_ids.insert(concept.id.clone()) {
            return Err(KnowledgeError::InvalidConcept {
                origin: origin.to_owned(),
                concept: concept.id,
                reason: "the id is used twice; give every concept its own id".into(),
            });
        }
        let invalid = |error: super::ConceptError| KnowledgeError::InvalidConcept {
            origin: origin.to_owned(),
            concept: concept.id.clone(),
            reason: error.to_string(),
        };
        let parsed = Concept::new(
            &concept.id,
            &concept.description,
            &concept.operation,
            &concept.params,
            concept.family,
            concept.severity,
        )
        .map_err(invalid)?;
        concepts.push(DomainConcept { concept: parsed, classes: concept.classes });
    }
    Ok(Domain { name: name.to_owned(), default_families: entry.default_families, concepts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    const MINIMAL: &str = r#"
[domains.toys]
default_families = ["global"]

[[domains.toys.concepts]]
id = "toys.rotated"
description = "a rotated {class}"
operation = "rotate"
"#;

    #[test]
    fn builtin_base_is_valid() {
        let base = KnowledgeBase::builtin().unwrap();
        for domain in ["clothing", "digits", "natural", "defects"] {
            assert!(base.domains.contains_key(domain), "{domain} missing");
        }
    }

    #[test]
    fn semantic_domains_default_to_global() {
        let base = KnowledgeBase::builtin().unwrap();
        for domain in ["clothing", "digits", "natural"] {
            assert_eq!(base.domains[domain].default_families, vec![OperationFamily::Global], "{domain}");
        }
        assert_eq!(base.domains["defects"].default_families, vec![OperationFamily::Local]);
    }

    #[test]
    fn every_domain_has_both_families() {
        let base = KnowledgeBase::builtin().unwrap();
        for (name, domain) in &base.domains {
            for family in [OperationFamily::Local, OperationFamily::Global] {
                assert!(domain.concepts.iter().any(|c| c.concept.family == family), "{name} lacks {family}");
            }
        }
    }

    #[test]
    fn select_filters_by_class_and_family() {
        let base = KnowledgeBase::builtin().unwrap();
        let trouser = base.select("clothing", &names(&["Trouser"]), &[]).unwrap();
        assert!(trouser.iter().any(|c| c.id == "clothing.trouser.one-leg-missing"));
        assert!(!trouser.iter().any(|c| c.id == "clothing.sandal.solid-straps"));
        assert!(trouser.iter().all(|c| c.family == OperationFamily::Global));
        assert!(trouser.iter().all(|c| !c.description.contains("{class}")));

        let local = base.select("clothing", &names(&["trouser"]), &[OperationFamily::Local]).unwrap();
        assert!(local.iter().all(|c| c.family == OperationFamily::Local));
        assert!(local.iter().any(|c| c.description == "a trouser with a hole torn in it"));
    }

    #[test]
    fn select_names_unknown_domain() {
        let base = KnowledgeBase::builtin().unwrap();
        let error = base.select("space", &names(&["x"]), &[]).unwrap_err().to_string();
        assert!(error.contains("space"), "{error}");
        assert!(error.contains("clothing"), "{error}");
    }

    #[test]
    fn select_without_matches_is_an_error() {
        let base = KnowledgeBase::parse(MINIMAL, "test").unwrap();
        let error = base.select("toys", &names(&["car"]), &[OperationFamily::Local]).unwrap_err().to_string();
        assert!(error.contains("toys") && error.contains("local"), "{error}");
    }

    #[test]
    fn unknown_operation_names_the_concept() {
        let text = MINIMAL.replace("\"rotate\"", "\"explode\"");
        let error = KnowledgeBase::parse(&text, "kb.toml").unwrap_err().to_string();
        assert!(error.contains("toys.rotated"), "{error}");
        assert!(error.contains("explode"), "{error}");
        assert!(error.contains("kb.toml"), "{error}");
    }

    #[test]
    fn severity_outside_unit_range_is_rejected() {
        let text = format!("{MINIMAL}severity = 1.2\n");
        let error = KnowledgeBase::parse(&text, "kb.toml").unwrap_err().to_string();
        assert!(error.contains("toys.rotated"), "{error}");
        assert!(error.contains("1.2"), "{error}");
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let text = format!("{MINIMAL}\n[[domains.toys.concepts]]\nid = \"toys.rotated\"\ndescription = \"x\"\noperation = \"flip\"\n");
        let error = KnowledgeBase::parse(&text, "kb.toml").unwrap_err().to_string();
        assert!(error.contains("toys.rotated"), "{error}");
        assert!(error.contains("twice"), "{error}");
    }

    #[test]
    fn unknown_key_and_bad_toml_are_rejected() {
        let text = format!("{MINIMAL}colour = \"red\"\n");
        let error = KnowledgeBase::parse(&text, "kb.toml").unwrap_err().to_string();
        assert!(error.contains("colour"), "{error}");
        assert!(KnowledgeBase::parse("[domains", "kb.toml").is_err());
    }

    #[test]
    fn missing_file_names_the_path() {
        let error = KnowledgeBase::from_path(Path::new("/no/such/kb.toml")).unwrap_err().to_string();
        assert!(error.contains("/no/such/kb.toml"), "{error}");
    }
}
