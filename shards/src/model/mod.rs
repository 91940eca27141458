//! What the rest of the crate speaks in: series labels and their selectors, the normalised
//! profile a distributor hands to its owning core, and the interned symbols of a head.
pub mod childindex;
pub mod ids;
pub mod labels;
pub mod profile;
pub mod selector;
pub mod stackkey;
pub mod symbols;
