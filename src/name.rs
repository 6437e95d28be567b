//! Names given at configuration time (tiers, degrade levels), made `'static` once.
//!
//! Layers copy these names into every answer's [`Provenance`](crate::Provenance). A
//! `Cow::Borrowed` name costs nothing to copy; an owned one would cost an allocation per
//! call. So the builders intern an owned name when they take it: it is leaked once, and the
//! same text given again (another stack built from the same configuration) reuses it. What
//! is kept is bounded by the distinct names a process configures, a few bytes each.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock, PoisonError};

/// `name` as a `Cow::Borrowed` of a `'static` string, interned if it was owned.
pub(crate) fn intern(name: Cow<'static, str>) -> Cow<'static, str> {
    match name {
        Cow::Borrowed(_) => name,
        Cow::Owned(owned) => Cow::Borrowed(leak_once(owned)),
    }
}

fn leak_once(name: String) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(&kept) = names.get(name.as_str()) {
        return kept;
    }
    let kept: &'static str = Box::leak(name.into_boxed_str());
    names.insert(kept);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_names_are_kept_once_and_borrowed_ones_untouched() {
        let a = intern(Cow::Owned("a tier name".to_owned()));
        let b = intern(Cow::Owned("a tier name".to_owned()));
        match (&a, &b) {
            (Cow::Borrowed(a), Cow::Borrowed(b)) => assert!(std::ptr::eq(*a, *b)),
            _ => panic!("interned names are borrowed"),
        }
        let s: &'static str = "static";
        match intern(Cow::Borrowed(s)) {
            Cow::Borrowed(kept) => assert!(std::ptr::eq(kept, s)),
            Cow::Owned(_) => panic!("a borrowed name stays borrowed"),
        }
    }
}
