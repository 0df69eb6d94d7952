//! Channel glob patterns, as used in rights and in
//! `auth.anonymous_subscribe` / `auth.anonymous_publish`.
//!
//! Patterns and channel names are split into segments at `/`. A pattern
//! matches a channel when its segments match the channel's segments:
//!
//! - a segment that is exactly `**` matches zero or more whole segments;
//! - in any other segment, `*` matches any run of zero or more characters
//!   within that one segment (it never crosses a `/`), and every other
//!   character matches only itself (case-sensitive);
//! - there are no other special characters: no `?`, no classes, no escapes.
//!
//! So `news/*` matches `news/a` but neither `news/a/b` nor `news`;
//! `user/alice/**` matches `user/alice`, `user/alice/x` and `user/alice/x/y`;
//! `*` matches `demo` but not `a/b`; `**` matches every channel; `price-*`
//! matches `price-eur`.

/// True when some pattern in `patterns` matches `channel`.
pub(crate) fn matches_any(patterns: &[String], channel: &str) -> bool {
    patterns.iter().any(|p| glob_matches(p, channel))
}

/// True when `pattern` is usable in config: non-empty, and made only of the
/// channel alphabet (letters, digits, `_ - . : /`) plus `*`.
pub fn is_valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/*".contains(&b))
}

/// Matches `channel` against a glob `pattern` with the rules in this
/// module's docs: `**` as a whole segment spans zero or more segments, `*` spans
/// characters within one segment.
pub fn glob_matches(pattern: &str, channel: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let chan: Vec<&str> = channel.split('/').collect();
    // Greedy wildcard matching over segments, with `**` as the star and every
    // other pattern segment consuming exactly one channel segment; on a
    // mismatch, let the last `**` absorb one more segment.
    let (mut p, mut c) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while c < chan.len() {
        if p < pat.len() && pat[p] == "**" {
            backtrack = Some((p, c));
            p += 1;
        } else if p < pat.len() && segment_matches(pat[p], chan[c]) {
            p += 1;
            c += 1;
        } else if let Some((star_p, star_c)) = backtrack {
            p = star_p + 1;
            c = star_c + 1;
            backtrack = Some((star_p, star_c + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|s| *s == "**")
}

/// Matches one segment, where `*` spans any run of characters.
fn segment_matches(pattern: &str, segment: &str) -> bool {
    let (pat, seg) = (pattern.as_bytes(), segment.as_bytes());
    let (mut p, mut s) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while s < seg.len() {
        if p < pat.len() && pat[p] == b'*' {
            backtrack = Some((p, s));
            p += 1;
        } else if p < pat.len() && pat[p] == seg[s] {
            p += 1;
            s += 1;
        } else if let Some((star_p, star_s)) = backtrack {
            p = star_p + 1;
            s = star_s + 1;
            backtrack = Some((star_p, star_s + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|b| *b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_rules() {
        let cases = [
            ("news/*", "news/a", true),
            ("news/*", "news/a/b", false),
            ("news/*", "news", false),
            ("user/alice/**", "user/alice", true),
            ("user/alice/**", "user/alice/x", true),
            ("user/alice/**", "user/alice/x/y", true),
            ("user/alice/**", "user/alicex", false),
            ("user/alice/**", "user/bob/x", false),
            ("*", "demo", true),
            ("*", "a/b", false),
            ("**", "a/b/c", true),
            ("**", "demo", true),
            ("demo", "demo", true),
            ("demo", "Demo", false),
            ("demo", "demo2", false),
            ("price-*", "price-eur", true),
            ("price-*", "prices", false),
            ("*-eur", "price-eur", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**/b", "b", true),
            ("**/b", "a/x/b", true),
            ("**/b", "a/x/bc", false),
            ("a/**/z", "a/z", true),
            ("a/**/z", "a/b/c/z", true),
            ("a/**/z", "a/b/c", false),
            ("a/**/*/z", "a/z", false),
            ("a/**/*/z", "a/q/z", true),
            ("a/**/**/z", "a/z", true),
        ];
        for (pattern, channel, expected) in cases {
            assert_eq!(
                glob_matches(pattern, channel),
                expected,
                "{pattern:?} vs {channel:?}"
            );
        }
    }

    #[test]
    fn glob_has_no_pathological_backtracking() {
        let pattern = "**/a/**/a/**/a/**/a/**/a/**/b";
        let channel = vec!["a"; 200].join("/");
        assert!(!glob_matches(pattern, &channel));
        assert!(!segment_matches("*a*a*a*a*a*b", &"a".repeat(2000)));
    }

    #[test]
    fn pattern_validity() {
        assert!(is_valid_pattern("news/*"));
        assert!(is_valid_pattern("user/alice/**"));
        assert!(!is_valid_pattern(""));
        assert!(!is_valid_pattern("news/?"));
        assert!(!is_valid_pattern("a b"));
    }
}
