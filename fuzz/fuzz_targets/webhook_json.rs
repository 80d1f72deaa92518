//! Any webhook body: parsed and validated, or refused with a field — never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|body: &[u8]| {
    if let Err(err) = tunnel_listener::webhook::parse_lead(body) {
        assert!(err.field().is_some(), "refusal without a field: {err}");
    }
});
