//! Local names: how a remote name becomes a name the kernel accepts, and back.
//!
//! MEGA (and Filen) accept names POSIX cannot hold: names containing `/` or NUL, the names `.`
//! and `..`, the empty name, names longer than `NAME_MAX` (255 bytes), and several children of
//! one folder with the same name. Every node must stay reachable, nothing may be hidden, and a
//! name the user types in the mount must map back to exactly one remote name. The mapping has
//! three layers, applied in order.
//!
//! # 1. Escaping (a bijection, [`escape`] / [`unescape`])
//!
//! Three look-alike characters stand in for what POSIX forbids, and a quote character escapes
//! the look-alikes themselves so the mapping stays reversible:
//!
//! | remote                                  | local                                 |
//! |-----------------------------------------|---------------------------------------|
//! | `/`                                     | `∕` U+2215 DIVISION SLASH             |
//! | NUL                                     | `␀` U+2400 SYMBOL FOR NULL            |
//! | a literal `∕` or `␀`                    | `‛∕`, `‛␀` (U+201B quote in front)    |
//! | a literal `‛` followed by `/`, NUL, `∕`, `␀` or `‛` | `‛‛` (then the next character) |
//! | any other `‛`                           | `‛` unchanged                         |
//! | a whole name `""`, `.` or `..`, possibly preceded by quotes (`‛*(|.|..)`) | one more `‛` in front: `‛`, `‛.`, `‛..`, `‛‛.`… |
//!
//! Every other character is kept, so ordinary names (including ones with `%`, `\`, emoji…) are
//! shown exactly as they are. Reading a local name back: a whole name of the form `‛+(|.|..)`
//! loses one leading quote; otherwise `‛` followed by `∕`, `␀` or `‛` stands for that character,
//! a lone `∕` for `/` and a lone `␀` for NUL. Because a bare `‛` is kept as is, a few local names
//! are not what [`escape`] would produce (`‛‛a` would read back as `‛a`, which is shown as
//! `‛a`); [`unescape`] refuses those ([`NameError::NonCanonical`]) so that every accepted local
//! name corresponds to exactly one remote name and back. Names the user types with a real `∕`
//! or `␀` therefore become `/` or NUL remotely — the price of showing remote slashes legibly.
//!
//! # 2. Shortening ([`local_base`])
//!
//! An escaped name over 255 bytes is cut at a character boundary and tagged with the first 8 hex
//! digits of SHA-256 of the full remote name, keeping a short extension:
//! `<prefix>…<8 hex><.ext>` (`…` is U+2026), at most 255 bytes. Such a name cannot be reversed
//! by itself; it is reversed by the folder's name index in the tree, like a duplicate name. The
//! kernel never hands us a name over 255 bytes, so a user cannot create one that needs this.
//!
//! # 3. Duplicates within a folder ([`assign_local_names`])
//!
//! Children whose shortened escaped names (their *base*) are equal are ordered by an order key
//! (the tree uses creation time, then handle), so the same node always gets the same name: the
//! first keeps the base, the others get ` (2)`, ` (3)`… inserted before the extension
//! (`report.pdf`, `report (2).pdf`). A base always belongs to a node that really has it, so a
//! suffixed name skips any name that is some child's base or was already handed out; groups are
//! processed in byte order of their base. The result is a pure function of the folder's
//! children, hence stable across remounts, and unique within the folder.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Longest file name Linux accepts, in bytes.
pub const NAME_MAX: usize = 255;

/// Stands in for `/`.
pub const SLASH: char = '\u{2215}';
/// Stands in for NUL.
pub const NUL: char = '\u{2400}';
/// Escapes a literal [`SLASH`], [`NUL`] or itself.
pub const QUOTE: char = '\u{201B}';
/// Marks a shortened name, before its hash tag.
const ELLIPSIS: char = '\u{2026}';
/// Extensions longer than this (dot included) are not kept apart when shortening or suffixing.
const MAX_EXT: usize = 32;

/// Why a local name does not name a remote one.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("`.` and `..` do not name a node")]
    Dot,
    #[error("a local name cannot contain `/` or NUL")]
    Forbidden,
    #[error("name longer than {NAME_MAX} bytes")]
    TooLong,
    /// The name would read back as a remote name that is shown differently (e.g. `‛‛a`).
    #[error("name is not in canonical escaped form")]
    NonCanonical,
}

fn is_forbidden(c: char) -> bool {
    c == '/' || c == '\0'
}

fn is_stand_in(c: char) -> bool {
    c == SLASH || c == NUL || c == QUOTE
}

/// `‛*(|.|..)`: the names that the whole-name rule handles.
fn is_dotlike(s: &str) -> bool {
    matches!(s.trim_start_matches(QUOTE), "" | "." | "..")
}

/// The escaped form of a remote name (layer 1). Borrows when nothing needs escaping.
pub fn escape(remote: &str) -> Cow<'_, str> {
    if is_dotlike(remote) {
        let mut out = String::with_capacity(remote.len() + QUOTE.len_utf8());
        out.push(QUOTE);
        out.push_str(remote);
        return Cow::Owned(out);
    }
    if !remote.chars().any(|c| is_forbidden(c) || is_stand_in(c)) {
        return Cow::Borrowed(remote);
    }
    let mut out = String::with_capacity(remote.len() + 8);
    let mut chars = remote.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' => out.push(SLASH),
            '\0' => out.push(NUL),
            SLASH | NUL => {
                out.push(QUOTE);
                out.push(c);
            }
            QUOTE => {
                out.push(QUOTE);
                // A bare quote is read back literally unless a stand-in follows it; the next
                // character's encoding starts with a stand-in exactly in these cases.
                if chars
                    .peek()
                    .is_some_and(|&n| is_forbidden(n) || is_stand_in(n))
                {
                    out.push(QUOTE);
                }
            }
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The remote name a local name stands for (inverse of [`escape`]). Refuses names the kernel
/// would not pass, and local names [`escape`] never produces.
pub fn unescape(local: &str) -> Result<Cow<'_, str>, NameError> {
    if local.is_empty() {
        return Err(NameError::Empty);
    }
    if local == "." || local == ".." {
        return Err(NameError::Dot);
    }
    if local.chars().any(is_forbidden) {
        return Err(NameError::Forbidden);
    }
    if local.len() > NAME_MAX {
        return Err(NameError::TooLong);
    }
    if is_dotlike(local) {
        // At least one quote here: bare "", "." and ".." were refused above.
        return Ok(Cow::Borrowed(&local[QUOTE.len_utf8()..]));
    }
    if !local.chars().any(is_stand_in) {
        return Ok(Cow::Borrowed(local));
    }
    let mut out = String::with_capacity(local.len());
    let mut chars = local.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            QUOTE => match chars.peek() {
                Some(&n) if is_stand_in(n) => {
                    out.push(n);
                    chars.next();
                }
                _ => out.push(QUOTE),
            },
            SLASH => out.push('/'),
            NUL => out.push('\0'),
            _ => out.push(c),
        }
    }
    if escape(&out) != local {
        return Err(NameError::NonCanonical);
    }
    Ok(Cow::Owned(out))
}

/// Splits `name` into stem and extension (the last `.` and what follows, when that is short and
/// the dot is neither the first nor the last character).
fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 && name.len() - i > 1 && name.len() - i <= MAX_EXT => name.split_at(i),
        _ => (name, ""),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The name a node would have locally if no sibling shared it (layers 1 and 2): escaped, and
/// shortened when over [`NAME_MAX`] bytes. Never empty, `.`, `..`, never contains `/` or NUL.
pub fn local_base(remote: &str) -> Cow<'_, str> {
    let escaped = escape(remote);
    if escaped.len() <= NAME_MAX {
        return escaped;
    }
    let digest = Sha256::digest(remote.as_bytes());
    let tag = format!("{ELLIPSIS}{}", hex::encode(&digest[..4]));
    let (stem, ext) = split_ext(&escaped);
    let stem = truncate(stem, NAME_MAX - tag.len() - ext.len());
    Cow::Owned(format!("{stem}{tag}{ext}"))
}

/// `base` with ` (n)` inserted before its extension, shortened to fit [`NAME_MAX`].
pub fn with_suffix(base: &str, n: u64) -> String {
    let suffix = format!(" ({n})");
    let (stem, ext) = split_ext(base);
    let stem = truncate(stem, NAME_MAX - suffix.len() - ext.len());
    format!("{stem}{suffix}{ext}")
}

/// Local names for the children of one folder (layer 3), given each child's order key and base
/// ([`local_base`] of its remote name). Returns, per child in input order, `None` when the child
/// keeps its base and `Some(name)` when it gets a suffixed name. Deterministic: depends only on
/// the set of (key, base) pairs, not on their order; keys are expected to be distinct.
pub fn assign_local_names<K: Ord + Copy>(children: &[(K, &str)]) -> Vec<Option<String>> {
    let mut out = vec![None; children.len()];
    let mut groups: BTreeMap<&str, Vec<(K, usize)>> = BTreeMap::new();
    for (i, &(key, base)) in children.iter().enumerate() {
        groups.entry(base).or_default().push((key, i));
    }
    if groups.len() == children.len() {
        return out;
    }
    let bases: HashSet<&str> = groups.keys().copied().collect();
    let mut handed_out: HashSet<String> = HashSet::new();
    for (base, members) in groups.iter_mut().filter(|(_, m)| m.len() > 1) {
        members.sort_unstable();
        let mut n = 2u64;
        for &(_, i) in &members[1..] {
            let name = loop {
                let candidate = with_suffix(base, n);
                n += 1;
                if !bases.contains(candidate.as_str()) && !handed_out.contains(&candidate) {
                    break candidate;
                }
            };
            handed_out.insert(name.clone());
            out[i] = Some(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_of_examples() {
        let cases = [
            ("plain.txt", "plain.txt"),
            ("a/b", "a∕b"),
            ("nul\0here", "nul␀here"),
            ("a∕b", "a‛∕b"),
            ("‛quoted", "‛quoted"),
            ("x‛/y", "x‛‛∕y"),
            ("", "‛"),
            (".", "‛."),
            ("..", "‛.."),
            ("‛", "‛‛"),
            ("‛.", "‛‛."),
            ("...", "..."),
            ("100% sure", "100% sure"),
        ];
        for (remote, local) in cases {
            assert_eq!(escape(remote), local, "escape({remote:?})");
            assert_eq!(unescape(local).unwrap(), remote, "unescape({local:?})");
        }
    }

    #[test]
    fn refuses_what_escape_never_produces() {
        assert_eq!(unescape(""), Err(NameError::Empty));
        assert_eq!(unescape(".."), Err(NameError::Dot));
        assert_eq!(unescape("a/b"), Err(NameError::Forbidden));
        assert_eq!(unescape("‛‛a"), Err(NameError::NonCanonical));
        assert_eq!(unescape(&"x".repeat(256)), Err(NameError::TooLong));
    }

    #[test]
    fn suffix_goes_before_the_extension() {
        assert_eq!(with_suffix("report.pdf", 2), "report (2).pdf");
        assert_eq!(with_suffix(".bashrc", 3), ".bashrc (3)");
        assert_eq!(with_suffix("name.", 2), "name. (2)");
        let long = format!("{}.txt", "é".repeat(200));
        let s = with_suffix(&long, 12);
        assert!(s.len() <= NAME_MAX && s.ends_with(" (12).txt"), "{s}");
    }

    #[test]
    fn suffixes_skip_real_names() {
        let got = assign_local_names(&[(1, "a.txt"), (2, "a.txt"), (3, "a (2).txt")]);
        assert_eq!(got, vec![None, Some("a (3).txt".into()), None]);
    }
}
