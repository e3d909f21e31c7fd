//! Anomaly concepts: a description, an edit recipe and a stable id.

use std::collections::BTreeMap;

use kka_shared::prompt::{self, OperationFamily, OperationSpec};
use kka_shared::records::Recipe;
use serde::{Deserialize, Serialize};

/// Placeholder in a description that is replaced by the normal class name.
pub const CLASS_PLACEHOLDER: &str = "{class}";

/// Why a concept is invalid. The caller adds which concept and file it came from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConceptError {
    #[error("unknown operation {found:?}; use one of {known}")]
    UnknownOperation { found: String, known: String },
    #[error("operation {operation} has no parameter {param:?}; it takes {known}")]
    UnknownParam { operation: &'static str, param: String, known: String },
    #[error("parameter {param} = {value} of operation {operation} is outside [{min}, {max}]")]
    ParamOutOfRange { operation: &'static str, param: &'static str, value: f64, min: f64, max: f64 },
    #[error("severity {0} is outside [0, 1]")]
    SeverityOutOfRange(f64),
    #[error("the description is empty")]
    EmptyDescription,
    #[error("the id is empty")]
    EmptyId,
}

/// One way a normal image can be anomalous, and how the procedural generator realises it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Concept {
    /// Stable id, the key of `GeneratorState::concept_weights`.
    pub id: String,
    /// What the anomalous image shows, with the class name filled in.
    pub description: String,
    pub family: OperationFamily,
    pub operation: String,
    /// Every parameter of the operation, defaults filled in.
    pub params: BTreeMap<String, f64>,
    /// A fixed severity in [0, 1]. `None` means the generator samples one per anomaly.
    pub severity: Option<f64>,
}

impl Concept {
    /// Validate the parts of a concept and fill in default parameters. `family` defaults to the
    /// operation's family.
    pub fn new(
        id: &str,
        description: &str,
        operation: &str,
        params: &BTreeMap<String, f64>,
        family: Option<OperationFamily>,
        severity: Option<f64>,
    ) -> Result<Concept, ConceptError> {
        if id.trim().is_empty() {
            return Err(ConceptError::EmptyId);
        }
        if description.trim().is_empty() {
            return Err(ConceptError::EmptyDescription);
        }
        let spec = find_operation(operation)?;
        let params = resolve_params(spec, params)?;
        if let Some(value) = severity {
            check_severity(value)?;
        }

        Ok(Concept {
            id: id.to_owned(),
            description: description.trim().to_owned(),
            family: family.unwrap_or(spec.family),
            operation: spec.name.to_owned(),
            params,
            severity,
        })
    }

    /// The operation's catalogue entry. Every constructed concept names a known operation.
    pub fn spec(&self) -> &'static OperationSpec {
        // `Concept::new` checked the name, and deserialised concepts go through `validate`.
        prompt::operation(&self.operation).unwrap_or(&prompt::OPERATIONS[0])
    }

    /// Check a concept that came from somewhere other than [`Concept::new`], such as JSON.
    pub fn validate(&self) -> Result<(), ConceptError> {
        Concept::new(&self.id, &self.description, &self.operation, &self.params, Some(self.family), self.severity)
            .map(|_| ())
    }

    /// Value of a parameter, or its catalogue default.
    pub fn param(&self, name: &str) -> f64 {
        let default = self.spec().param(name).map_or(0.0, |spec| spec.default);
        self.params.get(name).copied().unwrap_or(default)
    }

    /// The recipe of one anomaly made from this concept at `severity`.
    pub fn recipe(&self, severity: f64) -> Recipe {
        Recipe { operation: self.operation.clone(), params: self.params.clone(), severity }
    }

    /// A copy with [`CLASS_PLACEHOLDER`] in the description replaced by `class_name`.
    pub fn for_class(&self, class_name: &str) -> Concept {
        Concept { description: self.description.replace(CLASS_PLACEHOLDER, class_name), ..self.clone() }
    }
}

fn find_operation(name: &str) -> Result<&'static OperationSpec, ConceptError> {
    prompt::operation(name).ok_or_else(|| ConceptError::UnknownOperation {
        found: name.to_owned(),
        known: operation_names(),
    })
}

fn resolve_params(spec: &'static OperationSpec, given: &BTreeMap<String, f64>) -> Result<BTreeMap<String, f64>, ConceptError> {
    for (name, &value) in given {
        let Some(param) = spec.param(name) else {
            let known: Vec<&str> = spec.params.iter().map(|param| param.name).collect();
            return Err(ConceptError::UnknownParam { operation: spec.name, param: name.clone(), known: known.join(", ") });
        };
        // The negated comparison also rejects NaN.
        if !(value >= param.min && value <= param.max) {
            return Err(ConceptError::ParamOutOfRange {
                operation: spec.name,
                param: param.name,
                value,
                min: param.min,
                max: param.max,
            });
        }
    }

    let resolved = spec
        .params
        .iter()
        .map(|param| (param.name.to_owned(), given.get(param.name).copied().unwrap_or(param.default)))
        .collect();
    Ok(resolved)
}

fn check_severity(value: f64) -> Result<(), ConceptError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ConceptError::SeverityOutOfRange(value))
    }
}

/// Names of all operations, comma-separated, for error messages.
pub fn operation_names() -> String {
    prompt::OPERATIONS.iter().map(|spec| spec.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(name, value)| (name.to_string(), *value)).collect()
    }

    #[test]
    fn new_fills_defaults_and_family() {
        let concept = Concept::new("c", "a rotated {class}", "rotate", &params(&[("max_degrees", 90.0)]), None, None).unwrap();
        assert_eq!(concept.family, OperationFamily::Global);
        assert_eq!(concept.param("max_degrees"), 90.0);
        assert_eq!(concept.params["direction"], 0.0);
        assert_eq!(concept.for_class("Coat").description, "a rotated Coat");
    }

    #[test]
    fn new_rejects_unknown_operation() {
        let error = Concept::new("c", "d", "melt", &params(&[]), None, None).unwrap_err();
        assert!(matches!(error, ConceptError::UnknownOperation { .. }), "{error}");
        assert!(error.to_string().contains("rotate"), "{error}");
    }

    #[test]
    fn new_rejects_bad_params() {
        let error = Concept::new("c", "d", "rotate", &params(&[("speed", 1.0)]), None, None).unwrap_err();
        assert!(error.to_string().contains("speed"), "{error}");
        let error = Concept::new("c", "d", "rotate", &params(&[("max_degrees", 500.0)]), None, None).unwrap_err();
        assert!(error.to_string().contains("max_degrees = 500"), "{error}");
        let error = Concept::new("c", "d", "rotate", &params(&[("max_degrees", f64::NAN)]), None, None).unwrap_err();
        assert!(matches!(error, ConceptError::ParamOutOfRange { .. }), "{error}");
    }

    #[test]
    fn new_rejects_bad_severity_and_empty_text() {
        let error = Concept::new("c", "d", "flip", &params(&[]), None, Some(1.5)).unwrap_err();
        assert_eq!(error, ConceptError::SeverityOutOfRange(1.5));
        assert_eq!(Concept::new("c", " ", "flip", &params(&[]), None, None).unwrap_err(), ConceptError::EmptyDescription);
        assert_eq!(Concept::new("", "d", "flip", &params(&[]), None, None).unwrap_err(), ConceptError::EmptyId);
    }
}
