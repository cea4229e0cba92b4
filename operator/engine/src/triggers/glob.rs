//! Glob patterns for branch, tag and path filters: `*` matches any characters within one
//! `/`-separated segment, `**` any characters across segments (`src/**` matches every file
//! under `src/`), `?` one character other than `/`. Everything else matches itself.

/// Whether `text` matches `pattern` as a whole.
pub fn matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    matches_from(&pattern, &text)
}

/// Whether `text` matches any of `patterns`.
pub fn matches_any(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|p| matches(p, text))
}

fn matches_from(pattern: &[char], text: &[char]) -> bool {
    match pattern {
        [] => text.is_empty(),
        ['*', '*', rest @ ..] => {
            // `dir/**/x` also matches `dir/x`: the `**/` may stand for no segment at all.
            if let ['/', after @ ..] = rest
                && matches_from(after, text)
            {
                return true;
            }
            (0..=text.len()).any(|skip| matches_from(rest, &text[skip..]))
        }
        ['*', rest @ ..] => {
            let segment = text.iter().take_while(|c| **c != '/').count();
            (0..=segment).any(|skip| matches_from(rest, &text[skip..]))
        }
        ['?', rest @ ..] => match text {
            [c, after @ ..] if *c != '/' => matches_from(rest, after),
            _ => false,
        },
        [p, rest @ ..] => match text {
            [c, after @ ..] if c == p => matches_from(rest, after),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn literal_and_star_within_a_segment() {
        assert!(matches("main", "main"));
        assert!(!matches("main", "main2"));
        assert!(matches("release/*", "release/1.4"));
        assert!(!matches("release/*", "release/1.4/hotfix"));
        assert!(matches("v*", "v1.2.0"));
        assert!(matches("*", "feature"));
        assert!(!matches("*", "feature/x"));
        assert!(matches("v?.?", "v1.2"));
        assert!(!matches("a?c", "a/c"));
    }

    #[test]
    fn double_star_crosses_segments() {
        assert!(matches("src/**", "src/main.rs"));
        assert!(matches("src/**", "src/a/b/c.rs"));
        assert!(!matches("src/**", "docs/src/a.rs"));
        assert!(matches("**/*.md", "README.md"));
        assert!(matches("**/*.md", "docs/guide/intro.md"));
        assert!(matches("docs/**/*.md", "docs/intro.md"));
        assert!(matches("**", "anything/at/all"));
        assert!(!matches("*.md", "docs/intro.md"));
    }
}
