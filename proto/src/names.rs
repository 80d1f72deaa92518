//! The short lower-case names of the wire enums, as read models store them and tools
//! print them ("open", "won", "lost"): one table, not one per reader.

use crate::v1::{DealStatus, StageKind};

impl DealStatus {
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Open => "open",
            Self::Won => "won",
            Self::Lost => "lost",
        }
    }
}

impl StageKind {
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Open => "open",
            Self::Won => "won",
            Self::Lost => "lost",
        }
    }
}
