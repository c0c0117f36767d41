//! The remote command line of `status`, `journal` and `ssh`.
//!
//! The original builds it as the command followed by each argument quoted
//! with Go's `%q` (`strconv.Quote`) and joined by spaces; sshd hands that
//! string to the user's shell. We keep that exact form so the same command
//! lines reach the remote shell. Go quoting is not shell quoting (a `$` inside
//! stays live); that is the original's behaviour and is documented.

/// Go's `strconv.Quote`: a double-quoted string with Go escapes, where
/// printable characters (letters, marks, numbers, punctuation, symbols and
/// the ASCII space) stay as they are.
pub fn go_quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\u{07}' => quoted.push_str("\\a"),
            '\u{08}' => quoted.push_str("\\b"),
            '\u{0c}' => quoted.push_str("\\f"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            '\u{0b}' => quoted.push_str("\\v"),
            c if is_go_printable(c) => quoted.push(c),
            c if u32::from(c) < 0x80 => quoted.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if u32::from(c) < 0x1_0000 => quoted.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => quoted.push_str(&format!("\\U{:08x}", u32::from(c))),
        }
    }
    quoted.push('"');
    quoted
}

/// Go's `unicode.IsPrint`, as far as std lets us tell: no control
/// characters, and no white space other than the ASCII space.
fn is_go_printable(c: char) -> bool {
    c == ' ' || !(c.is_control() || c.is_whitespace())
}

/// The original's remote command line: `argv[0]`, then each further argument
/// Go-quoted, space-separated. `None` for an empty `argv` (an interactive
/// shell).
pub fn remote_command_line(argv: &[String]) -> Option<String> {
    let (program, args) = argv.split_first()?;
    let mut line = program.clone();
    for arg in args {
        line.push(' ');
        line.push_str(&go_quote(arg));
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_quote(input: &str, expected: &str) {
        assert_eq!(go_quote(input), expected, "quoting {input:?}");
    }

    #[test]
    fn quotes_like_go_strconv_quote() {
        check_quote("", r#""""#);
        check_quote("hello.service", r#""hello.service""#);
        check_quote("exit 3", r#""exit 3""#);
        check_quote(r#"say "hi""#, r#""say \"hi\"""#);
        check_quote(r"back\slash", r#""back\\slash""#);
        check_quote("tab\there\nnew", r#""tab\there\nnew""#);
        check_quote("\u{07}\u{08}\u{0c}\r\u{0b}", r#""\a\b\f\r\v""#);
        check_quote("nul\u{0}del\u{7f}", r#""nul\x00del\x7f""#);
        check_quote("$HOME 'single'", r#""$HOME 'single'""#);
        check_quote("héllo ✓", r#""héllo ✓""#);
        check_quote("nbsp\u{a0}", r#""nbsp\u00a0""#);
        check_quote("\u{85}", r#""\u0085""#);
    }

    #[test]
    fn command_line_quotes_every_argument_but_the_command() {
        let argv = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            remote_command_line(&argv(&["systemctl", "status", "-l", "hello.service"])).as_deref(),
            Some(r#"systemctl "status" "-l" "hello.service""#)
        );
        assert_eq!(
            remote_command_line(&argv(&["sh", "-c", "exit 3"])).as_deref(),
            Some(r#"sh "-c" "exit 3""#)
        );
        // A single argument is a shell command line, passed through untouched.
        assert_eq!(
            remote_command_line(&argv(&["ls -l | head"])).as_deref(),
            Some("ls -l | head")
        );
        assert_eq!(remote_command_line(&[]), None);
    }
}
