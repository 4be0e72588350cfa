//! Placeholder: written by the policy work.
