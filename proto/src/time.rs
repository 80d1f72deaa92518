//! Timestamps between the wire and `time`: written once for every service.

use time::OffsetDateTime;

/// `at` on the wire.
pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: at.nanosecond() as i32,
    }
}

/// Now, on the wire.
pub fn now() -> prost_types::Timestamp {
    timestamp(OffsetDateTime::now_utc())
}

/// A wire timestamp as a time; `None` when it is out of range.
pub fn time_of(at: &prost_types::Timestamp) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_round_trips_and_nonsense_is_none() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_764_000_000_123_456_789).unwrap();
        assert_eq!(time_of(&timestamp(at)), Some(at));
        let nonsense = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(time_of(&nonsense), None);
    }
}
