//! Properties of the local-name mapping (`veilfs::tree::names`).

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use veilfs::tree::names::{
    NAME_MAX, NameError, QUOTE, assign_local_names, escape, local_base, unescape, with_suffix,
};

/// Names drawn mostly from the characters the mapping cares about, so that escapes, quotes
/// and dot names are exercised far more often than uniform strings would.
fn tricky_name() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        Just('/'),
        Just('\0'),
        Just('\u{2215}'),
        Just('\u{2400}'),
        Just('\u{201B}'),
        Just('.'),
        Just('a'),
        Just(' '),
        Just('é'),
        Just('('),
        any::<char>(),
    ];
    prop::collection::vec(ch, 0..12).prop_map(|v| v.into_iter().collect())
}

fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        tricky_name(),
        any::<String>(),
        // Long names, in one- to four-byte characters, around and beyond NAME_MAX.
        (
            prop_oneof![Just("a"), Just("é"), Just("€"), Just("𝄞"), Just("/")],
            60..300usize
        )
            .prop_map(|(c, n)| c.repeat(n)),
        (tricky_name(), 200..300usize, tricky_name())
            .prop_map(|(a, n, b)| format!("{a}{}{b}.txt", "x".repeat(n))),
    ]
}

fn assert_posix_ok(local: &str) {
    assert!(!local.is_empty(), "empty local name");
    assert!(local != "." && local != "..", "dot local name {local:?}");
    assert!(!local.contains('/') && !local.contains('\0'), "{local:?}");
    assert!(local.len() <= NAME_MAX, "{} bytes", local.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn escape_is_reversible_and_posix_safe(remote in any_name()) {
        let local = escape(&remote);
        prop_assert!(!local.contains('/') && !local.contains('\0'));
        prop_assert!(!local.is_empty() && local != "." && local != "..");
        if local.len() <= NAME_MAX {
            prop_assert_eq!(unescape(&local).unwrap(), remote.as_str());
        }
    }

    #[test]
    fn local_base_is_posix_safe_and_exact_when_it_fits(remote in any_name()) {
        let base = local_base(&remote);
        assert_posix_ok(&base);
        let escaped = escape(&remote);
        if escaped.len() <= NAME_MAX {
            prop_assert_eq!(&*base, &*escaped);
        } else {
            // Shortened names carry a tag from the full name, so distinct long names with a
            // common prefix rarely share a base (and the folder's suffixes settle the rest).
            prop_assert!(base.contains('…'));
        }
    }

    /// Every local name that reads back names exactly one remote name, which shows as it.
    #[test]
    fn unescape_accepts_only_canonical_names(local in any_name()) {
        match unescape(&local) {
            Ok(remote) => prop_assert_eq!(&*escape(&remote), local.as_str()),
            // Only the quote, kept bare when nothing special follows it, has a second
            // spelling; a name without one always reads back.
            Err(NameError::NonCanonical) => prop_assert!(local.contains(QUOTE)),
            Err(NameError::Empty) => prop_assert!(local.is_empty()),
            Err(NameError::Dot) => prop_assert!(local == "." || local == ".."),
            Err(NameError::Forbidden) => {
                prop_assert!(local.contains('/') || local.contains('\0'))
            }
            Err(NameError::TooLong) => prop_assert!(local.len() > NAME_MAX),
        }
    }

    #[test]
    fn suffixes_fit_and_stay_safe(remote in any_name(), n in 2u64..100_000) {
        let base = local_base(&remote);
        let s = with_suffix(&base, n);
        assert_posix_ok(&s);
        let suffix = format!(" ({n})");
        prop_assert!(s.contains(&suffix));
    }

    /// Names within one folder: unique, POSIX-safe, a lone base kept as is, the first of a
    /// group (by key) keeps the base, and the result does not depend on the listing order.
    #[test]
    fn folder_names_are_unique_and_deterministic(
        names in prop::collection::vec(
            prop_oneof![
                Just("a".to_string()),
                Just("a.txt".to_string()),
                Just("a (2).txt".to_string()),
                Just("a (3).txt".to_string()),
                Just(".".to_string()),
                Just("‛.".to_string()),
                Just("x/y".to_string()),
                Just("x∕y".to_string()),
                any_name(),
            ],
            0..24,
        ),
        seed in any::<u64>(),
    ) {
        // Distinct keys, in an order unrelated to the listing order.
        let keys: Vec<u64> = (0..names.len() as u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed)
            .collect();
        let bases: Vec<String> = names.iter().map(|n| local_base(n).into_owned()).collect();
        let input: Vec<(u64, &str)> = keys.iter().copied().zip(bases.iter().map(String::as_str)).collect();
        let out = assign_local_names(&input);
        let locals: Vec<&str> = out
            .iter()
            .zip(&bases)
            .map(|(o, b)| o.as_deref().unwrap_or(b))
            .collect();

        let unique: HashSet<&str> = locals.iter().copied().collect();
        prop_assert_eq!(unique.len(), locals.len(), "duplicate local names: {:?}", locals);
        for l in &locals {
            assert_posix_ok(l);
        }
        let mut groups: HashMap<&str, Vec<(u64, usize)>> = HashMap::new();
        for (i, (k, b)) in input.iter().enumerate() {
            groups.entry(b).or_default().push((*k, i));
        }
        for (base, members) in &groups {
            let first = members.iter().min().unwrap().1;
            prop_assert_eq!(locals[first], *base);
            for &(_, i) in members {
                if i != first {
                    prop_assert!(out[i].is_some());
                }
            }
        }

        let mut reversed = input.clone();
        reversed.reverse();
        let out_rev = assign_local_names(&reversed);
        let by_key: HashMap<u64, Option<String>> =
            reversed.iter().map(|(k, _)| *k).zip(out_rev).collect();
        for ((k, _), o) in input.iter().zip(&out) {
            prop_assert_eq!(&by_key[k], o);
        }
    }
}

#[test]
fn reserved_names_and_collisions_are_told_apart() {
    // Everything that could plausibly collide after escaping stays distinct.
    let remotes = [
        "", ".", "..", "‛", "‛.", "‛..", "‛‛", "/", "∕", "‛∕", "‛/", "\0", "␀", "‛␀", "a/b", "a∕b",
    ];
    let locals: HashSet<String> = remotes.iter().map(|r| escape(r).into_owned()).collect();
    assert_eq!(locals.len(), remotes.len(), "{locals:?}");
    for r in remotes {
        assert_eq!(unescape(&escape(r)).unwrap(), r);
    }
}

#[test]
fn a_long_name_is_shortened_with_its_extension() {
    let remote = format!("{}.mkv", "é".repeat(300));
    let base = local_base(&remote);
    assert!(base.len() <= NAME_MAX);
    assert!(base.ends_with(".mkv"), "{base}");
    let other = format!("{}x.mkv", "é".repeat(300));
    assert_ne!(
        local_base(&other),
        base,
        "different long names share a prefix, not a tag"
    );
}
