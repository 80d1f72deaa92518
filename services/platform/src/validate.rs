//! Input rules shared by every service that accepts them (the webhook, intake and
//! deal-service check the same contact the same way). Pure functions; errors name the field.

use crate::ApiError;

/// Contact fields of a lead or deal, validated and normalised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactInput {
    pub external_id: String,
    pub name: String,
    pub email: String,
    pub phone: String,
}

/// The wire's contact, as given (to be [`ContactInput::validated`]).
impl From<salesplan_proto::v1::Contact> for ContactInput {
    fn from(c: salesplan_proto::v1::Contact) -> Self {
        Self {
            external_id: c.external_id,
            name: c.name,
            email: c.email,
            phone: c.phone,
        }
    }
}

impl From<ContactInput> for salesplan_proto::v1::Contact {
    fn from(c: ContactInput) -> Self {
        Self {
            external_id: c.external_id,
            name: c.name,
            email: c.email,
            phone: c.phone,
        }
    }
}

impl ContactInput {
    /// Trims every field, checks formats and lengths, and requires at least one of
    /// external id, email or phone (a contact must be reachable or identifiable).
    /// Every violation is reported at once.
    pub fn validated(self) -> Result<Self, ApiError> {
        let mut checks = crate::Checks::new();
        let contact = Self {
            external_id: checks.take(text("external_id", &self.external_id, 128)),
            name: checks.take(text("name", &self.name, 200)),
            email: checks.take(email("email", &self.email)),
            phone: checks.take(phone("phone", &self.phone)),
        };
        let unreachable = [&self.external_id, &self.email, &self.phone]
            .iter()
            .all(|f| f.trim().is_empty());
        if unreachable {
            checks.note(ApiError::invalid(
                "external_id",
                "one of external_id, email or phone is required",
            ));
        }
        checks.finish()?;
        Ok(contact)
    }

    /// The digits of the phone number, the form phone search matches on.
    pub fn phone_digits(&self) -> String {
        digits(&self.phone)
    }

    /// What to call a deal about this contact when no title is given.
    pub fn display_name(&self) -> &str {
        [&self.name, &self.email, &self.phone, &self.external_id]
            .into_iter()
            .find(|s| !s.is_empty())
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// How a contact is recognised across deals and bulk jobs: its platform id, else e-mail,
/// else phone digits. `None` for a contact with none of them.
pub fn contact_key(external_id: &str, email: &str, phone: &str) -> Option<String> {
    let digits = digits(phone);
    if !external_id.is_empty() {
        Some(format!("ext:{external_id}"))
    } else if !email.is_empty() {
        Some(format!("email:{}", email.to_lowercase()))
    } else if !digits.is_empty() {
        Some(format!("phone:{digits}"))
    } else {
        None
    }
}

/// Trimmed text of at most `max` user-perceived characters (graphemes: "👍🏽" and "é" written
/// as e + accent are one each), without control characters and without characters that
/// deceive: bidirectional controls (a name that reads the other way), invisible characters
/// (two names that look alike, a label that looks empty), line and paragraph separators.
/// Zero-width joiners and variation selectors are taken inside emoji, where they belong.
pub fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    use unicode_segmentation::UnicodeSegmentation as _;
    let value = value.trim();
    // Graphemes, each of at most ten code points: one grapheme could hold any number of
    // combining marks, and stored text must stay bounded; ten hold the longest emoji
    // sequences (a family of four with its joiners is seven).
    let mut graphemes = 0;
    for grapheme in value.graphemes(true) {
        graphemes += 1;
        if grapheme.chars().count() > MAX_CODE_POINTS_PER_CHARACTER {
            return Err(ApiError::invalid(
                field,
                format!("a character of more than {MAX_CODE_POINTS_PER_CHARACTER} code points"),
            ));
        }
    }
    if graphemes > max {
        return Err(ApiError::invalid(
            field,
            format!("longer than {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid(field, "contains control characters"));
    }
    if let Some(c) = deceptive_char(value) {
        return Err(ApiError::invalid(
            field,
            format!(
                "contains an invisible or direction-changing character (U+{:04X})",
                c as u32
            ),
        ));
    }
    Ok(value.to_owned())
}

/// The most code points one user-perceived character of a text may hold.
const MAX_CODE_POINTS_PER_CHARACTER: usize = 10;

/// The first character of `value` that changes how the text looks without being seen.
fn deceptive_char(value: &str) -> Option<char> {
    let chars: Vec<char> = value.chars().collect();
    chars.iter().enumerate().find_map(|(i, &c)| {
        let before = i.checked_sub(1).map(|j| chars[j]);
        let after = chars.get(i + 1).copied();
        let in_emoji = match c {
            // A joiner between two pictographs (👨‍👩‍👧); a variation selector after one (❤️).
            '\u{200D}' => before.is_some_and(pictographic) && after.is_some_and(pictographic),
            '\u{FE00}'..='\u{FE0F}' => {
                before.is_some_and(pictographic)
                    // A keycap: 1️⃣ is a digit, the selector, and the enclosing keycap.
                    || (before.is_some_and(|b| b.is_ascii_digit() || b == '#' || b == '*')
                        && after == Some('\u{20E3}'))
            }
            _ => true,
        };
        (invisible(c) || !in_emoji).then_some(c)
    })
}

/// Bidirectional controls, zero-width and other invisible characters, separators.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        | '\u{00AD}' | '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180E}' | '\u{200B}' | '\u{200C}' | '\u{2060}'..='\u{2064}' | '\u{3164}'
        | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}'
        | '\u{2028}' | '\u{2029}'
        // Blank or placeholder glyphs: a braille blank, the object replacement character.
        | '\u{2800}' | '\u{FFFC}'
        // Private use: no agreed look (a font may draw anything, or another account's logo).
        | '\u{E000}'..='\u{F8FF}' | '\u{F0000}'..='\u{FFFFD}' | '\u{100000}'..='\u{10FFFD}'
    )
}

/// Emoji and the marks that extend them (skin tones, a preceding variation selector).
fn pictographic(c: char) -> bool {
    matches!(c,
        '\u{00A9}' | '\u{00AE}' | '\u{203C}' | '\u{2049}' | '\u{2122}' | '\u{2139}'
        | '\u{2194}'..='\u{21AA}' | '\u{231A}'..='\u{23FF}' | '\u{24C2}' | '\u{25AA}'..='\u{25FE}'
        | '\u{2600}'..='\u{27BF}' | '\u{2934}' | '\u{2935}' | '\u{2B05}'..='\u{2B55}'
        | '\u{3030}' | '\u{303D}' | '\u{3297}' | '\u{3299}' | '\u{FE0F}'
        | '\u{1F000}'..='\u{1FAFF}'
    )
}

/// Like [`text`], and not empty.
pub fn required_text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let value = text(field, value, max)?;
    if value.is_empty() {
        return Err(ApiError::invalid(field, "required"));
    }
    Ok(value)
}

/// Empty, or a plausible e-mail address (`local@domain.tld`), lower-cased.
pub fn email(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(String::new());
    }
    let invalid = || ApiError::invalid(field, "not a valid e-mail address");
    if value.len() > 254 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    let (local, domain) = value.split_once('@').ok_or_else(invalid)?;
    let domain_ok = !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..");
    if local.is_empty() || local.len() > 64 || !domain_ok {
        return Err(invalid());
    }
    Ok(value.to_lowercase())
}

/// Empty, or a phone number: digits with optional `+`, spaces, dashes, dots and brackets,
/// 5 to 15 digits (E.164 allows at most 15). Kept as written; search uses the digits.
pub fn phone(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(String::new());
    }
    let allowed = |c: char| c.is_ascii_digit() || " +-().".contains(c);
    let plus_ok = value.rfind('+').is_none_or(|i| i == 0);
    let count = digits(value).len();
    if !value.chars().all(allowed) || !plus_ok || !(5..=15).contains(&count) {
        return Err(ApiError::invalid(
            field,
            "not a valid phone number (5 to 15 digits, optional +, spaces, dashes, brackets)",
        ));
    }
    Ok(value.to_owned())
}

pub fn digits(value: &str) -> String {
    value.chars().filter(char::is_ascii_digit).collect()
}

/// The largest amount a caller may send, in minor units: 10^15 (ten trillion dollars in
/// cents). One deal can never come near the int64 range, and sums are kept wider anyway.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;

/// A money amount: 0 to [`MAX_AMOUNT_MINOR`] minor units of a three-letter upper-case
/// currency.
pub fn money(field: &str, amount_minor: i64, currency: &str) -> Result<(i64, String), ApiError> {
    let mut checks = crate::Checks::new();
    if amount_minor < 0 {
        checks.note(ApiError::invalid(
            format!("{field}.amount_minor"),
            "must not be negative",
        ));
    } else if amount_minor > MAX_AMOUNT_MINOR {
        checks.note(ApiError::invalid(
            format!("{field}.amount_minor"),
            format!("must be at most {MAX_AMOUNT_MINOR} (10^15 minor units)"),
        ));
    }
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        checks.note(ApiError::invalid(
            format!("{field}.currency"),
            "must be a three-letter ISO 4217 code such as USD",
        ));
    }
    checks.finish()?;
    Ok((amount_minor, currency.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn contact_needs_an_identifier() {
        let err = ContactInput {
            name: "Ann".into(),
            ..Default::default()
        }
        .validated()
        .unwrap_err();
        assert_eq!(err.field(), Some("external_id"));
    }

    #[test]
    fn emails() {
        assert_eq!(
            email("email", " Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        for bad in [
            "ann", "ann@", "@x.io", "a@b", "a@@b.io", "a b@c.io", "a@.io", "a@b..io",
        ] {
            assert_eq!(
                email("email", bad).unwrap_err().field(),
                Some("email"),
                "{bad}"
            );
        }
    }

    #[test]
    fn phones() {
        assert_eq!(
            phone("phone", "+7 (912) 345-67-89").unwrap(),
            "+7 (912) 345-67-89"
        );
        assert_eq!(digits("+7 (912) 345-67-89"), "79123456789");
        for bad in ["12", "+1 2+3 45678", "call me", "1234567890123456"] {
            assert!(phone("phone", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn money_rules() {
        assert!(money("amount", 100, "USD").is_ok());
        assert_eq!(
            money("amount", -1, "USD").unwrap_err().field(),
            Some("amount.amount_minor")
        );
        assert_eq!(
            money("amount", 1, "usd").unwrap_err().field(),
            Some("amount.currency")
        );
        assert!(money("amount", MAX_AMOUNT_MINOR, "USD").is_ok());
        for too_much in [MAX_AMOUNT_MINOR + 1, i64::MAX] {
            assert_eq!(
                money("amount", too_much, "USD").unwrap_err().field(),
                Some("amount.amount_minor")
            );
        }
    }

    #[test]
    fn text_counts_characters_not_bytes() {
        assert!(text("chat_label", "Продажи2025!", 12).is_ok());
        assert!(text("chat_label", "Продажи2025!!", 12).is_err());
        assert!(text("name", "a\u{0}b", 12).is_err());
    }

    #[test]
    fn text_counts_what_a_person_sees() {
        // Twelve thumbs with a skin tone (24 code points) are twelve characters.
        assert!(text("chat_label", &"👍🏽".repeat(12), 12).is_ok());
        assert!(text("chat_label", &"👍🏽".repeat(13), 12).is_err());
        // e + combining accent is one; a family is one.
        assert!(text("chat_label", &"e\u{301}".repeat(12), 12).is_ok());
        assert!(text("chat_label", "👨\u{200D}👩\u{200D}👧 ❤\u{FE0F}", 12).is_ok());
        // Twelve families (5 code points each) are twelve; a keycap is one.
        assert!(text("chat_label", &"👨\u{200D}👩\u{200D}👧".repeat(12), 12).is_ok());
        assert!(text("chat_label", "1\u{FE0F}\u{20E3}", 12).is_ok());
        // One grapheme with many combining marks is refused, a hundred or eleven.
        assert!(text("chat_label", &format!("a{}", "\u{301}".repeat(100)), 12).is_err());
        assert!(text("chat_label", &format!("a{}", "\u{301}".repeat(10)), 12).is_err());
        assert!(text("chat_label", &format!("a{}", "\u{301}".repeat(9)), 12).is_ok());
    }

    #[test]
    fn text_that_deceives_is_refused_naming_the_field() {
        for bad in [
            "Ann\u{202E}gnal",     // right-to-left override
            "\u{2066}Bob\u{2069}", // isolate
            "Ca\u{200B}rl",        // zero-width space
            "\u{200D}",            // a joiner alone: a label that looks empty
            "a\u{200D}b",          // a joiner between letters
            "\u{3164}",            // Hangul filler: looks empty
            "x\u{2028}y",          // line separator
            "tag\u{E0041}",        // tag character
            "\u{FEFF}Dan",         // byte-order mark
            "a\u{FE0F}",           // a variation selector on a letter
            "\u{2800}",            // braille blank: looks empty
            "\u{FFFC}",            // object replacement
            "Co\u{E000}",          // private use
            "a\u{FE0F}\u{20E3}",   // a keycap needs a digit, # or *
        ] {
            let err = text("chat_label", bad, 12).unwrap_err();
            assert_eq!(err.field(), Some("chat_label"), "{bad:?}");
        }
        assert!(text("name", "Анна-Мария O'Neil", 64).is_ok());
        assert!(
            text("name", "محمد", 64).is_ok(),
            "right-to-left text itself is fine"
        );
    }

    proptest! {
        #[test]
        fn validation_never_panics(external_id in ".*", name in ".*", email in ".*", phone in ".*") {
            let _ = ContactInput { external_id, name, email, phone }.validated();
        }

        #[test]
        fn accepted_phones_have_5_to_15_digits(raw in "[0-9 +()-]{0,30}") {
            if let Ok(p) = phone("phone", &raw) && !p.is_empty() {
                prop_assert!((5..=15).contains(&digits(&p).len()));
            }
        }
    }
}
