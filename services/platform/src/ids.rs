//! Identifiers: time-ordered UUIDs for new rows and events, and name-based ones where a
//! retry must find the same id again.

use uuid::Uuid;

/// A new time-ordered id (UUID v7): index-friendly and sortable by creation.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

/// Parses an id field of a request, naming the field when it is not a UUID.
pub fn parse_id(field: &str, value: &str) -> Result<Uuid, crate::ApiError> {
    if value.is_empty() {
        return Err(crate::ApiError::invalid(field, "required"));
    }
    Uuid::parse_str(value).map_err(|_| crate::ApiError::invalid(field, "not a valid id (UUID)"))
}

/// The same id for the same parts, always (UUID v5): a retried request finds its first id.
pub fn derived_id(parts: &[&str]) -> Uuid {
    // Parts are joined with a byte that cannot occur in them (ids and subject-safe tokens),
    // so ("a", "bc") and ("ab", "c") differ.
    Uuid::new_v5(&NAMESPACE, parts.join("\u{1f}").as_bytes())
}

const NAMESPACE: Uuid = Uuid::from_u128(0x5a1e_5b1a_0000_4000_8000_0000_0000_0001);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(derived_id(&["a", "b"]), derived_id(&["a", "b"]));
        assert_ne!(derived_id(&["a", "bc"]), derived_id(&["ab", "c"]));
    }

    #[test]
    fn parse_id_names_the_field() {
        let err = parse_id("plan_id", "nope").unwrap_err();
        assert_eq!(err.field(), Some("plan_id"));
        assert_eq!(
            parse_id("plan_id", "").unwrap_err().to_string(),
            "plan_id: required"
        );
    }
}
