//! Glob patterns for branch, tag and path filters: `*` matches any characters within one
//! `/`-separated segment, `**` any characters across segments (`src/**` matches every file
//! under `src/`), `?` one character other than `/`. Everything else matches itself.

/// Whether `text` matches `pattern` as a whole. Runs in O(pattern × text) time whatever
/// the pattern: a trigger's glob is an author's input, and a backtracking matcher takes
/// exponential time on patterns like `*a*a*a*a*b`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let tokens = tokens(pattern);
    // The set of pattern positions reached so far (an NFA simulation).
    let mut reached = vec![false; tokens.len() + 1];
    reached[0] = true;
    skip_stars(&tokens, &mut reached);
    for c in text.chars() {
        let mut next = vec![false; tokens.len() + 1];
        for (i, token) in tokens.iter().enumerate().filter(|(i, _)| reached[*i]) {
            match token {
                Token::Literal(p) if *p == c => next[i + 1] = true,
                Token::OneChar if c != '/' => next[i + 1] = true,
                Token::Star if c != '/' => next[i] = true,
                Token::DoubleStar => next[i] = true,
                _ => {}
            }
        }
        skip_stars(&tokens, &mut next);
        if !next.contains(&true) {
            return false;
        }
        reached = next;
    }
    reached[tokens.len()]
}

/// Whether `text` matches any of `patterns`.
pub fn matches_any(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|p| matches(p, text))
}

/// One element of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`: one character other than `/`.
    OneChar,
    /// `*`: any characters within a segment.
    Star,
    /// `**`: any characters, across segments.
    DoubleStar,
    /// Consumes nothing and leads both to the next position and `skip` positions on: `**/`
    /// is written `[Optional(3), DoubleStar, Literal('/')]`, since it may stand for no
    /// segment at all (`dir/**/x` matches `dir/x`).
    Optional(usize),
}

fn tokens(pattern: &str) -> Vec<Token> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let token = match &chars[i..] {
            ['*', '*', '/', ..] => {
                i += 3;
                tokens.extend([Token::Optional(3), Token::DoubleStar]);
                Token::Literal('/')
            }
            ['*', '*', ..] => {
                i += 2;
                Token::DoubleStar
            }
            ['*', ..] => {
                i += 1;
                Token::Star
            }
            ['?', ..] => {
                i += 1;
                Token::OneChar
            }
            [c, ..] => {
                i += 1;
                Token::Literal(*c)
            }
            [] => break,
        };
        tokens.push(token);
    }
    tokens
}

/// Adds the positions reached without consuming a character: a star matching nothing, an
/// optional part skipped. These only lead forward, so one pass in order is enough.
fn skip_stars(tokens: &[Token], reached: &mut [bool]) {
    for (i, token) in tokens.iter().enumerate() {
        if !reached[i] {
            continue;
        }
        match token {
            Token::Star | Token::DoubleStar => reached[i + 1] = true,
            Token::Optional(skip) => {
                reached[i + 1] = true;
                reached[i + skip] = true;
            }
            Token::Literal(_) | Token::OneChar => {}
        }
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
        assert!(matches("a/**/b/**/c", "a/b/c"));
        assert!(matches("a/**/b/**/c", "a/x/y/b/z/c"));
        assert!(!matches("a/**/b", "a/xb"));
        assert!(matches("**/", "dir/"));
        assert!(matches("", ""));
        assert!(!matches("", "x"));
    }

    /// A pattern that makes a backtracking matcher take exponential time is answered at
    /// once (this test would not finish with the old matcher).
    #[test]
    fn many_stars_do_not_backtrack() {
        let pattern = format!("{}b", "*a".repeat(40));
        let text = "a".repeat(2000);
        assert!(!matches(&pattern, &text));
        let pattern = format!("{}b", "**a".repeat(40));
        assert!(!matches(&pattern, &text));
        assert!(matches(&pattern, &format!("{text}b")));
    }
}
