//! Go's `path.Match`: what Conflicts and Replaces globs mean.
//!
//! A transcription of the Go standard library's algorithm (chunks split at
//! `*`, `*` never crossing `/`, `?`, `[...]` classes with ranges and `^`,
//! `\` escapes), working on bytes and decoding runes where Go does. Malformed
//! patterns never match, whatever the name: Go reports `ErrBadPattern` and
//! fleet ignored the error, treating it as "no match".

/// A malformed pattern (Go's `path.ErrBadPattern`).
struct BadPattern;

/// Whether `name` matches the Go `path.Match` pattern. A malformed pattern
/// never matches.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    go_match(pattern.as_bytes(), name.as_bytes()).unwrap_or(false)
}

/// Whether `pattern` is a well-formed Go `path.Match` pattern.
pub fn glob_is_valid(pattern: &str) -> bool {
    go_match(pattern.as_bytes(), b"").is_ok()
}

fn go_match(mut pattern: &[u8], mut name: &[u8]) -> Result<bool, BadPattern> {
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing `*` matches the rest of the name unless it has a `/`.
            return Ok(!name.contains(&b'/'));
        }
        // Look for a match at the current position. If this is the last
        // chunk, it must use up the whole name, or the star could do better.
        let (matched, error) = match match_chunk(chunk, name) {
            Ok(Some(rest_of_name)) => (Some(rest_of_name), false),
            Ok(None) => (None, false),
            Err(BadPattern) => (None, true),
        };
        if let Some(rest_of_name) = matched
            && (rest_of_name.is_empty() || !pattern.is_empty())
        {
            name = rest_of_name;
            continue;
        }
        if error {
            return Err(BadPattern);
        }
        if star {
            // Look for a match skipping `skip + 1` bytes; a star cannot skip `/`.
            let mut skip = 0;
            while skip < name.len() && name[skip] != b'/' {
                match match_chunk(chunk, &name[skip + 1..])? {
                    Some(rest_of_name) if pattern.is_empty() && !rest_of_name.is_empty() => {}
                    Some(rest_of_name) => {
                        name = rest_of_name;
                        continue 'pattern;
                    }
                    None => {}
                }
                skip += 1;
            }
        }
        // No match; still report a malformed remainder of the pattern.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Splits off the leading stars and the chunk up to the next star outside a
/// class: `(star, chunk, rest)`.
fn scan_chunk(mut pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while let Some((b'*', rest)) = pattern.split_first() {
        pattern = rest;
        star = true;
    }
    let mut in_range = false;
    let mut idx = 0;
    while idx < pattern.len() {
        match pattern[idx] {
            // A trailing `\` is left for `match_chunk` to report.
            b'\\' if idx + 1 < pattern.len() => idx += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        idx += 1;
    }
    (star, &pattern[..idx], &pattern[idx..])
}

/// Matches `chunk` at the start of `name`: `Some(rest of name)` on a match.
/// After a mismatch the chunk is still scanned, so that a malformed chunk is
/// always reported.
fn match_chunk<'a>(mut chunk: &[u8], mut name: &'a [u8]) -> Result<Option<&'a [u8]>, BadPattern> {
    let mut failed = false;
    while let Some(&first) = chunk.first() {
        if !failed && name.is_empty() {
            failed = true;
        }
        match first {
            b'[' => {
                let mut character = 0u32;
                if !failed {
                    let (decoded, width) = decode_rune(name);
                    character = decoded;
                    name = &name[width..];
                }
                chunk = &chunk[1..];
                let mut negated = false;
                if let Some((b'^', rest)) = chunk.split_first() {
                    negated = true;
                    chunk = rest;
                }
                let mut class_matched = false;
                let mut n_ranges = 0;
                loop {
                    if let Some((b']', rest)) = chunk.split_first()
                        && n_ranges > 0
                    {
                        chunk = rest;
                        break;
                    }
                    let (low, rest) = get_escaped(chunk)?;
                    chunk = rest;
                    let mut high = low;
                    // `get_escaped` never leaves `chunk` empty.
                    if chunk.first() == Some(&b'-') {
                        let (escaped, rest) = get_escaped(&chunk[1..])?;
                        high = escaped;
                        chunk = rest;
                    }
                    if low <= character && character <= high {
                        class_matched = true;
                    }
                    n_ranges += 1;
                }
                if class_matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if name[0] == b'/' {
                        failed = true;
                    }
                    let (_, width) = decode_rune(name);
                    name = &name[width..];
                }
                chunk = &chunk[1..];
            }
            b'\\' => {
                chunk = &chunk[1..];
                let Some(&escaped) = chunk.first() else {
                    return Err(BadPattern);
                };
                if !failed {
                    if escaped != name[0] {
                        failed = true;
                    }
                    name = &name[1..];
                }
                chunk = &chunk[1..];
            }
            literal => {
                if !failed {
                    if literal != name[0] {
                        failed = true;
                    }
                    name = &name[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    if failed { Ok(None) } else { Ok(Some(name)) }
}

/// One possibly escaped character of a class, and the rest of the chunk,
/// which must not be empty (Go's `getEsc`).
fn get_escaped(mut chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        Some(b'\\') => {
            chunk = &chunk[1..];
            if chunk.is_empty() {
                return Err(BadPattern);
            }
        }
        Some(_) => {}
    }
    let (character, width) = decode_rune(chunk);
    if character == REPLACEMENT && width == 1 {
        return Err(BadPattern);
    }
    let rest = &chunk[width..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((character, rest))
}

/// U+FFFD, what Go's decoder yields for invalid UTF-8.
const REPLACEMENT: u32 = 0xFFFD;

/// Go's `utf8.DecodeRune`: the first rune and its width; invalid or
/// truncated UTF-8 gives `(U+FFFD, 1)`, an empty input `(U+FFFD, 0)`.
fn decode_rune(bytes: &[u8]) -> (u32, usize) {
    let Some(&first) = bytes.first() else {
        return (REPLACEMENT, 0);
    };
    let width = match first {
        0x00..=0x7f => return (u32::from(first), 1),
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => return (REPLACEMENT, 1),
    };
    match bytes
        .get(..width)
        .and_then(|prefix| std::str::from_utf8(prefix).ok())
    {
        Some(text) => text
            .chars()
            .next()
            .map_or((REPLACEMENT, 1), |c| (u32::from(c), width)),
        None => (REPLACEMENT, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, name: &str, expected: bool) {
        assert_eq!(
            glob_match(pattern, name),
            expected,
            "path.Match({pattern:?}, {name:?})"
        );
    }

    #[test]
    fn go_path_match_cases() {
        // The table of Go's own path.Match tests; errors count as no match.
        for (pattern, name, expected) in [
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", false),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            ("[]a]", "]", false),
            ("[-]", "-", false),
            ("[x-]", "x", false),
            ("[x-]", "-", false),
            ("[x-]", "z", false),
            ("[-x]", "x", false),
            ("[-x]", "-", false),
            ("[-x]", "a", false),
            ("\\", "a", false),
            ("[a-b-c]", "a", false),
            ("[", "a", false),
            ("[^", "a", false),
            ("[^bc", "a", false),
            ("a[", "a", false),
            ("a[", "ab", false),
            ("a[", "x", false),
            ("a/b[", "x", false),
            ("*x", "xxx", true),
            ("", "", true),
            ("", "a", false),
        ] {
            check(pattern, name, expected);
        }
    }

    #[test]
    fn unit_name_globs() {
        check("foo*", "foo@1.service", true);
        check("foo@*.service", "foo@1.service", true);
        check("foo@*.service", "bar@1.service", false);
        check("*.service", "foo.socket", false);
        check("foo.service", "foo.service", true);
        check("foo?.service", "foo1.service", true);
        check("foo[12].service", "foo3.service", false);
        assert!(glob_is_valid("foo[12]*"));
        assert!(!glob_is_valid("foo["));
    }
}
