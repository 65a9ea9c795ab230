//! `agent_path_template`: how a method's facts shape the agent's SPIFFE ID
//! path, in the spelling SPIRE's templates use for the simple cases
//! (`{{ .PluginName }}/{{ .Fingerprint }}`), so a SPIRE operator's template
//! reads the same here. Only field substitution: no functions, no logic.

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

/// Why a template cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TemplateError {
    /// Unbalanced braces.
    #[error("agent_path_template {0:?}: unbalanced {{{{ }}}}")]
    Unbalanced(String),
    /// A field the method does not provide.
    #[error("agent_path_template {template:?}: unknown field .{field}; known: {known}")]
    UnknownField {
        /// The template.
        template: String,
        /// The field.
        field: String,
        /// The fields the method provides.
        known: String,
    },
}

impl PathTemplate {
    /// Parses `template`, accepting only fields in `known`.
    pub(crate) fn parse(template: &str, known: &[&str]) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| TemplateError::Unbalanced(template.to_owned()))?;
            let field = after[..close].trim();
            let name = field.strip_prefix('.').unwrap_or(field);
            if !known.contains(&name) {
                return Err(TemplateError::UnknownField {
                    template: template.to_owned(),
                    field: name.to_owned(),
                    known: known.join(", ."),
                });
            }
            parts.push(Part::Field(name.to_owned()));
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            return Err(TemplateError::Unbalanced(template.to_owned()));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The path, with each field's value from `value` (`None`: empty).
    pub(crate) fn render(&self, value: impl Fn(&str) -> Option<String>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => out.push_str(&value(f).unwrap_or_default()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_substituted_and_unknown_ones_refused() {
        let known = ["PluginName", "Fingerprint", "Subject.CommonName"];
        let t = PathTemplate::parse("{{ .PluginName }}/{{.Subject.CommonName}}-x", &known).unwrap();
        let path = t.render(|f| match f {
            "PluginName" => Some("x509pop".into()),
            "Subject.CommonName" => Some("web-17".into()),
            _ => None,
        });
        assert_eq!(path, "x509pop/web-17-x");
        assert!(matches!(
            PathTemplate::parse("{{ .Nope }}", &known),
            Err(TemplateError::UnknownField { .. })
        ));
        assert!(matches!(
            PathTemplate::parse("{{ .PluginName", &known),
            Err(TemplateError::Unbalanced(_))
        ));
        assert!(matches!(
            PathTemplate::parse("a }} b", &known),
            Err(TemplateError::Unbalanced(_))
        ));
    }
}
