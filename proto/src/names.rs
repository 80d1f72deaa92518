//! The short lower-case names of the wire enums, as read models store them and tools
//! print them ("open", "won", "lost"): one table, not one per reader.

use crate::v1::{ChangeKind, DealStatus, StageKind};

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

impl ChangeKind {
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Moved => "moved",
            Self::Assigned => "assigned",
            Self::Closed => "closed",
            Self::Reopened => "reopened",
            Self::Erased => "erased",
            Self::Accepted => "accepted",
        }
    }
}
