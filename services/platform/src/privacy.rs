//! Personal data outside deal-service: what other services need of a contact is whether
//! two deals are the same person's (the related-manager rule), never who it is. They get a
//! keyed hash of how the contact is recognised (platform id, else e-mail, else phone
//! digits): HMAC-SHA256 under a per-deployment secret, over the account and that key. It
//! matches the same person within an account, differs between accounts, and cannot be
//! turned back into an e-mail, nor guessed from one, without the secret
//! (docs/privacy.md).

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::{
    config::{ConfigError, Env, Secret},
    validate,
};

/// Marks a keyed contact key (a plain one starts with `ext:`, `email:` or `phone:`).
const KEYED: &str = "k1:";

/// Contact keys under the deployment's secret (`SALESPLAN_CONTACT_KEY_SECRET`, the same
/// for deal-service, the distributor and the listener).
#[derive(Clone)]
pub struct ContactKeys {
    secret: Secret,
}

impl std::fmt::Debug for ContactKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContactKeys([redacted])")
    }
}

impl ContactKeys {
    /// Only for local development, the tests and the demo.
    pub const DEV_SECRET: &str = "salesplan-local-development-contact-key";
    const KEY: &str = "SALESPLAN_CONTACT_KEY_SECRET";

    pub fn new(secret: Secret) -> Self {
        Self { secret }
    }

    pub fn dev() -> Self {
        Self::new(Secret::new(Self::DEV_SECRET))
    }

    /// `SALESPLAN_CONTACT_KEY_SECRET`: at least 32 bytes; without it, the development secret,
    /// but only where `SALESPLAN_ENV=development`. Changing it makes every earlier contact
    /// new to the related-manager rule: it is kept for the deployment's life.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let development = env.get("SALESPLAN_ENV") == Some("development");
        match env.get(Self::KEY) {
            Some(secret) if secret == Self::DEV_SECRET && !development => Err(ConfigError::new(
                Self::KEY,
                "is the public development secret (accepted only with SALESPLAN_ENV=development)",
            )),
            Some(secret) if secret.len() < 32 => {
                Err(ConfigError::new(Self::KEY, "must be at least 32 bytes"))
            }
            Some(secret) => Ok(Self::new(Secret::new(secret))),
            None if development => Ok(Self::dev()),
            None => Err(ConfigError::new(
                Self::KEY,
                "not set: a secret of at least 32 bytes, the same for deal-service, the distributor and the listener",
            )),
        }
    }

    /// The keyed key of a contact of `account`; `None` for a contact with no platform id,
    /// e-mail or phone digits.
    pub fn of(&self, account: &str, external_id: &str, email: &str, phone: &str) -> Option<String> {
        validate::contact_key(external_id, email, phone).map(|plain| self.of_plain(account, &plain))
    }

    /// The keyed key of a deal event's contact: the one it carries, or for an event
    /// published before events carried it (with the contact itself), the contact's keyed.
    pub fn of_deal_event(&self, event: &salesplan_proto::v1::DealEvent) -> Option<String> {
        if !event.contact_key.is_empty() {
            return Some(event.contact_key.clone());
        }
        let contact = event.deal.as_ref()?.contact.as_ref()?;
        self.of(
            &event.account_id,
            &contact.external_id,
            &contact.email,
            &contact.phone,
        )
    }

    /// The keyed key of each identifier the contact has (platform id, e-mail, phone digits),
    /// whichever the contact is recognised by: what an erasure remembers, so a lead of any of
    /// them is matched.
    pub fn every_of(
        &self,
        account: &str,
        external_id: &str,
        email: &str,
        phone: &str,
    ) -> Vec<String> {
        [
            validate::contact_key(external_id, "", ""),
            validate::contact_key("", email, ""),
            validate::contact_key("", "", phone),
        ]
        .into_iter()
        .flatten()
        .map(|plain| self.of_plain(account, &plain))
        .collect()
    }

    /// The keyed form of a plain key (`ext:…`, `email:…`, `phone:…`) of `account`.
    pub fn of_plain(&self, account: &str, plain: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        // The account's length first: ("ab", "c…") and ("a", "bc…") are not the same input.
        mac.update(&(account.len() as u64).to_be_bytes());
        mac.update(account.as_bytes());
        mac.update(plain.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!(
            "{KEYED}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
        )
    }

    /// Whether `key` is already keyed (not a plain key stored before keys were keyed).
    pub fn is_keyed(key: &str) -> bool {
        key.starts_with(KEYED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_person_matches_within_an_account_only_and_nothing_of_them_shows() {
        let keys = ContactKeys::dev();
        let a = keys.of("acme", "", "Anna@Example.com", "").unwrap();
        assert_eq!(
            a,
            keys.of("acme", "", "anna@example.com", "+1 555").unwrap()
        );
        assert_ne!(a, keys.of("globex", "", "anna@example.com", "").unwrap());
        assert_ne!(a, keys.of("acme", "", "anna2@example.com", "").unwrap());
        assert!(ContactKeys::is_keyed(&a) && !a.contains("anna"), "{a}");
        assert_eq!(a.len(), KEYED.len() + 43);
        assert_eq!(a, keys.of_plain("acme", "email:anna@example.com"));
        let other = ContactKeys::new(Secret::new("another deployment's secret, 32 bytes+"));
        assert_ne!(a, other.of("acme", "", "anna@example.com", "").unwrap());
        assert_eq!(keys.of("acme", "", "", "no digits"), None);
        let every = keys.every_of("acme", "tg-1", "Anna@Example.com", "+1 555");
        assert_eq!(every.len(), 3);
        assert_eq!(every[0], keys.of("acme", "tg-1", "", "").unwrap());
        assert_eq!(every[1], a);
        assert_eq!(every[2], keys.of("acme", "", "", "1555").unwrap());
        // The account's boundary is part of the input.
        assert_ne!(keys.of_plain("ab", "ext:c"), keys.of_plain("a", "bext:c"));
    }

    #[test]
    fn the_secret_is_required_outside_development() {
        let missing = ContactKeys::from_env(&Env::default()).unwrap_err();
        assert_eq!(missing.key, "SALESPLAN_CONTACT_KEY_SECRET");
        let dev = Env::from_pairs([("SALESPLAN_ENV", "development")]);
        assert!(ContactKeys::from_env(&dev).is_ok());
        let public = Env::from_pairs([("SALESPLAN_CONTACT_KEY_SECRET", ContactKeys::DEV_SECRET)]);
        assert!(ContactKeys::from_env(&public).is_err());
        let short = Env::from_pairs([("SALESPLAN_CONTACT_KEY_SECRET", "short")]);
        assert!(ContactKeys::from_env(&short).is_err());
        let own = Env::from_pairs([(
            "SALESPLAN_CONTACT_KEY_SECRET",
            "a secret of this deployment, 32 bytes or more",
        )]);
        assert!(ContactKeys::from_env(&own).is_ok());
    }
}
