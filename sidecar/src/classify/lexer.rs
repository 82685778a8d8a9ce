//! Just enough of Postgres's lexer to tell literals, parameters, quoted
//! names and comments apart in SQL text, at a fraction of a parse's cost.
//!
//! It backs two text rewrites that must not touch quoted text or comments:
//! lifting a simple query's literals out as parameters (so that queries
//! differing only in their values share one parse, see [`lift_literals`]),
//! and renumbering `$n`. Anything it does not model exactly (escape and
//! dollar-quoted strings, exotic numbers, unterminated quotes) comes out as
//! [`Token::Other`], and callers give up on the rewrite rather than guess.

use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Space,
    Comment,
    /// A keyword or an unquoted name.
    Word,
    QuotedName,
    /// A plain `'...'` string (standard conforming: `''` is a quote).
    String,
    /// Decimal digits, optionally with a fraction: `42`, `3.14`.
    Number,
    /// `$n`, one-based as written.
    Param(usize),
    /// One character of an operator or punctuation.
    Punct(u8),
    /// What this lexer does not model; see the module comment.
    Other,
}

/// The tokens of `sql` with their byte ranges; they cover the whole text.
pub fn tokens(sql: &str) -> impl Iterator<Item = (Token, Range<usize>)> + '_ {
    let b = sql.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= b.len() {
            return None;
        }
        let start = at;
        let (token, end) = next(b, at);
        at = end;
        Some((token, start..end))
    })
}

fn is_word_byte(c: u8) -> bool {
    WORD_BYTES[c as usize]
}

/// Bytes a name or keyword continues with; a table, as most of a text's
/// bytes are tested against it.
const WORD_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
        c += 1;
    }
    table
};

/// The token starting at `at` and where it ends.
fn next(b: &[u8], at: usize) -> (Token, usize) {
    let c = b[at];
    let peek = |k: usize| b.get(at + k).copied();
    match c {
        // Postgres's whitespace, vertical tab included (as pg_query's parser has it).
        b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' => (
            Token::Space,
            at + b[at..].iter().take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')).count(),
        ),
        b'-' if peek(1) == Some(b'-') => {
            (Token::Comment, b[at..].iter().position(|&c| c == b'\n').map_or(b.len(), |n| at + n + 1))
        }
        b'/' if peek(1) == Some(b'*') => block_comment(b, at),
        b'\'' => quoted(b, at, b'\'', Token::String),
        b'"' => quoted(b, at, b'"', Token::QuotedName),
        b'$' if peek(1).is_some_and(|d| d.is_ascii_digit()) => {
            let end = at + 1 + b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if b.get(end).is_some_and(|&c| is_word_byte(c)) {
                return (Token::Other, end);
            }
            let n = std::str::from_utf8(&b[at + 1..end]).ok().and_then(|s| s.parse().ok());
            (n.map_or(Token::Other, Token::Param), end)
        }
        // A dollar-quoted string ($$...$$, $tag$...$tag$), or a stray `$`.
        b'$' => (Token::Other, dollar_quoted(b, at)),
        c if c.is_ascii_digit() => number(b, at),
        b'.' if peek(1).is_some_and(|d| d.is_ascii_digit()) => (Token::Other, number(b, at + 1).1),
        c if is_word_byte(c) => {
            let end = at + b[at..].iter().take_while(|&&c| is_word_byte(c)).count();
            // E'..', B'..', X'..', N'..', U&'..': strings with rules of their own.
            let prefixed = matches!(&b[at..end], [p] if b"eEbBxXnN".contains(p)) && b.get(end) == Some(&b'\'')
                || matches!(&b[at..end], [b'u' | b'U']) && b.get(end) == Some(&b'&');
            if prefixed {
                return (Token::Other, b.len());
            }
            (Token::Word, end)
        }
        c => (Token::Punct(c), at + 1),
    }
}

/// `/* ... */`, nested as Postgres nests them.
fn block_comment(b: &[u8], at: usize) -> (Token, usize) {
    let mut depth = 0usize;
    let mut i = at;
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return (Token::Comment, i);
                }
            }
            _ => i += 1,
        }
    }
    (Token::Other, b.len())
}

/// A quoted string or name; a doubled quote stands for one.
fn quoted(b: &[u8], at: usize, q: u8, token: Token) -> (Token, usize) {
    let mut i = at + 1;
    while i < b.len() {
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return (token, i + 1);
        }
        i += 1;
    }
    (Token::Other, b.len())
}

fn dollar_quoted(b: &[u8], at: usize) -> usize {
    let tag_len = b[at + 1..].iter().take_while(|&&c| c != b'$' && is_word_byte(c)).count();
    let open = at + 1 + tag_len;
    if b.get(open) != Some(&b'$') {
        return at + 1;
    }
    let tag = &b[at..=open];
    b[open + 1..].windows(tag.len()).position(|w| w == tag).map_or(b.len(), |n| open + 1 + n + tag.len())
}

/// Digits with an optional fraction; exponents, other bases and digit
/// separators are [`Token::Other`].
fn number(b: &[u8], at: usize) -> (Token, usize) {
    let digits = |from: usize| from + b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut end = digits(at);
    if b.get(end) == Some(&b'.') && b.get(end + 1).is_some_and(u8::is_ascii_digit) {
        end = digits(end + 1);
    }
    if b.get(end).is_some_and(|&c| is_word_byte(c) || c == b'.') {
        let rest = end + b[end..].iter().take_while(|&&c| is_word_byte(c) || c == b'.').count();
        return (Token::Other, rest);
    }
    (Token::Number, end)
}

/// A simple query's text with its literals replaced by `$1`, `$2`, ... and
/// their values as text: queries that differ only in values share one
/// template, parsed once. `None` when the text has no literal, something
/// the lexer does not model, or `$n` already.
///
/// A minus before a number is folded into the value where it can only be
/// unary (after an operator or a parenthesis), so `id = -5` binds -5, as
/// Postgres's grammar folds it; after a word (a keyword or a column name,
/// which the lexer cannot tell apart) the number stays as written.
pub fn lift_literals(sql: &str) -> Option<(String, Vec<String>)> {
    // Filled only from the first literal on: BEGIN, COMMIT and the like
    // allocate nothing.
    let mut template = String::new();
    let mut values = Vec::new();
    // Text that stays as it is, is copied in runs: `sql[copied..]` is still
    // to be appended to `template`.
    let mut copied = 0;
    // The last two tokens that are not space or comments, and where the last began in `template`.
    let mut before: Option<Token> = None;
    let mut last: Option<(Token, usize)> = None;
    // A minus, then only opening parentheses: Postgres folds `-(4)` into -4.
    let mut minus_then_parens = false;
    for (token, range) in tokens(sql) {
        let text = &sql[range.clone()];
        // Where this token begins in the template, once what is pending is copied.
        let at = template.len() + range.start - copied;
        if matches!(token, Token::String | Token::Number) {
            if template.capacity() == 0 {
                template.reserve(sql.len() + 8);
            }
            template.push_str(&sql[copied..range.start]);
            copied = range.start;
        }
        let lifted = match token {
            Token::Other | Token::Param(_) => return None,
            Token::String => Some(text[1..text.len() - 1].replace("''", "'")),
            // Nor is a number after two minuses folded the way a lexer can tell.
            Token::Number
                if minus_then_parens && matches!(last, Some((Token::Punct(b'('), _)))
                    || matches!((before, last), (Some(Token::Punct(b'-')), Some((Token::Punct(b'-'), _)))) =>
            {
                None
            }
            Token::Number => match last {
                Some((Token::Punct(b'-' | b'+'), sign_at)) => match before {
                    // A binary operator: the number alone.
                    Some(Token::Word) => None,
                    Some(operand_end) if ends_operand(operand_end) => Some(text.to_string()),
                    // Unary minus belongs to the value, as Postgres's grammar
                    // folds it; a unary plus it leaves as an expression.
                    _ if template.as_bytes()[sign_at] == b'-' => {
                        // Comments between the sign and the number stay:
                        // they may be hints.
                        let between = template.split_off(sign_at + 1);
                        template.truncate(sign_at);
                        if between.contains("/*") || between.contains("--") {
                            template.push_str(&between);
                        }
                        Some(format!("-{text}"))
                    }
                    _ => None,
                },
                _ => Some(text.to_string()),
            }
            .map(as_postgres_reads),
            _ => None,
        };
        match lifted {
            Some(value) => {
                // `no'u'` (a typed literal) must not become the identifier `no$3`.
                if template.bytes().last().is_some_and(is_word_byte) {
                    template.push(' ');
                }
                values.push(value);
                template.push('$');
                template.push_str(itoa::Buffer::new().format(values.len()));
                copied = range.end;
            }
            None => {
                // Nor `'a'b` (b an alias) `$1b`.
                let ends_word = match copied < range.start {
                    true => is_word_byte(sql.as_bytes()[range.start - 1]),
                    false => template.bytes().last().is_some_and(is_word_byte),
                };
                if text.bytes().next().is_some_and(is_word_byte) && ends_word {
                    template.push_str(&sql[copied..range.start]);
                    template.push(' ');
                    copied = range.start;
                }
            }
        }
        if !matches!(token, Token::Space | Token::Comment) {
            minus_then_parens = match token {
                Token::Punct(b'-') => true,
                Token::Punct(b'(') => minus_then_parens,
                _ => false,
            };
            before = last.map(|(t, _)| t);
            last = Some((token, at));
        }
    }
    if values.is_empty() {
        return None;
    }
    template.push_str(&sql[copied..]);
    Some((template, values))
}

/// The highest `$n` placeholder in `sql` (0 when there is none); `None`
/// when the text holds something the lexer does not model.
pub fn highest_param(sql: &str) -> Option<usize> {
    let mut highest = 0;
    for (token, _) in tokens(sql) {
        match token {
            Token::Param(n) => highest = highest.max(n),
            Token::Other => return None,
            _ => {}
        }
    }
    Some(highest)
}

/// A number as the value Postgres's parser makes of it: an integer that
/// fits in 32 bits becomes that integer (`07` is 7, `-0` is 0); any other
/// number keeps its text, as Postgres keeps it.
fn as_postgres_reads(number: String) -> String {
    match number.parse::<i32>() {
        Ok(n) if number.bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
            // Only what it prints differently (`007`, `-0`) is written again.
            let digits = number.trim_start_matches('-');
            if digits.len() > 1 && digits.starts_with('0') || n == 0 && number.len() > 1 {
                n.to_string()
            } else {
                number
            }
        }
        _ => number,
    }
}

/// A token after which `+` or `-` is a binary operator.
fn ends_operand(token: Token) -> bool {
    matches!(token, Token::Number | Token::String | Token::QuotedName | Token::Param(_) | Token::Punct(b')' | b']'))
}

/// `$n` renumbered in order of first appearance from `$1`, and the original
/// (zero-based) index of each new one; quoted text and comments untouched.
pub fn renumber_params(sql: &str) -> (String, Vec<usize>) {
    let mut order: Vec<usize> = Vec::new();
    let mut out = String::with_capacity(sql.len());
    for (token, range) in tokens(sql) {
        match token {
            Token::Param(n) => {
                let old = n.max(1) - 1;
                let new = match order.iter().position(|&o| o == old) {
                    Some(k) => k + 1,
                    None => {
                        order.push(old);
                        order.len()
                    }
                };
                out.push('$');
                out.push_str(&new.to_string());
            }
            _ => out.push_str(&sql[range]),
        }
    }
    (out, order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lift(sql: &str) -> Option<(String, Vec<String>)> {
        lift_literals(sql)
    }

    fn lifted(sql: &str, template: &str, values: &[&str]) {
        let (t, v) = lift(sql).unwrap_or_else(|| panic!("{sql}: not lifted"));
        assert_eq!(t, template, "{sql}");
        assert_eq!(v, values, "{sql}");
    }

    #[test]
    fn integers_are_bound_as_postgres_reads_them() {
        lifted("SELECT * FROM t WHERE id = 007", "SELECT * FROM t WHERE id = $1", &["7"]);
        lifted("SELECT * FROM t WHERE id = -0", "SELECT * FROM t WHERE id = $1", &["0"]);
        lifted("SELECT * FROM t WHERE id = -007", "SELECT * FROM t WHERE id = $1", &["-7"]);
        lifted("SELECT * FROM t WHERE id = 0 AND k = 10", "SELECT * FROM t WHERE id = $1 AND k = $2", &["0", "10"]);
        lifted("SELECT * FROM t WHERE id = -5", "SELECT * FROM t WHERE id = $1", &["-5"]);
    }

    #[test]
    fn tokens_cover_the_text() {
        for sql in ["SELECT 1", "select 'a''b' -- c\n, \"x\"\"y\" /* /* n */ */ $1", "é = 'ü'", "$$x$$", "'open"] {
            let joined: String = tokens(sql).map(|(_, r)| &sql[r]).collect();
            assert_eq!(joined, sql);
        }
    }

    #[test]
    fn literals_become_parameters() {
        lifted(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 70412;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            &["70412"],
        );
        lifted(
            "UPDATE t SET name = 'O''Brien' WHERE id IN (1, 2.5)",
            "UPDATE t SET name = $1 WHERE id IN ($2, $3)",
            &["O'Brien", "1", "2.5"],
        );
        lifted("SELECT t1.c2 FROM t1 WHERE x='a'::text", "SELECT t1.c2 FROM t1 WHERE x=$1::text", &["a"]);
    }

    /// Found by fuzzing (`templates`): a literal glued to a word stays apart
    /// from it, so that the template does not name another identifier; a
    /// number is lifted only as Postgres reads it.
    #[test]
    fn a_parameter_never_joins_a_neighbouring_word() {
        lifted("SELECT * FROM t WHERE a = no'u'", "SELECT * FROM t WHERE a = no $1", &["u"]);
        lifted("SELECT 'a'b", "SELECT $1 b", &["a"]);
        // Postgres's identifiers take any non-ASCII character.
        lifted("SELECT * FROM t WHERE r = \u{6df}'u'", "SELECT * FROM t WHERE r = \u{6df} $1", &["u"]);
        // A vertical tab is space, also between a minus and its number.
        lifted("SELECT * FROM t WHERE r = -\x0b4", "SELECT * FROM t WHERE r = $1", &["-4"]);
        // A comment between them is kept: it may be a hint.
        lifted(
            "SELECT * FROM t WHERE r = -/* shardcar: a */ 4",
            "SELECT * FROM t WHERE r = /* shardcar: a */ $1",
            &["-4"],
        );
        lifted("SELECT * FROM t WHERE r = - -- c\n4", "SELECT * FROM t WHERE r =  -- c\n$1", &["-4"]);
        // A negated parenthesised number is folded by Postgres: not lifted.
        lifted("SELECT * FROM t WHERE a = - ((4)) AND b = 5", "SELECT * FROM t WHERE a = - ((4)) AND b = $1", &["5"]);
        lifted("SELECT * FROM t WHERE a = - -4 AND b = 5", "SELECT * FROM t WHERE a = - -4 AND b = $1", &["5"]);
        // An integer is lifted as the value Postgres reads.
        lifted("SELECT * FROM t WHERE id = 07 AND x = -0", "SELECT * FROM t WHERE id = $1 AND x = $2", &["7", "0"]);
    }

    #[test]
    fn signs_fold_only_when_unary() {
        lifted("SELECT * FROM t WHERE id = -5", "SELECT * FROM t WHERE id = $1", &["-5"]);
        lifted("SELECT * FROM t WHERE id IN (-5,+6)", "SELECT * FROM t WHERE id IN ($1,+6)", &["-5"]);
        lifted("SELECT 3 - 2", "SELECT $1 - $2", &["3", "2"]);
        lifted("SELECT (1)-2", "SELECT ($1)-$2", &["1", "2"]);
        // After a word: a column (binary) or a keyword (unary); left as written.
        lifted("UPDATE a SET b = b + 1234 WHERE id = 7", "UPDATE a SET b = b + 1234 WHERE id = $1", &["7"]);
        assert_eq!(lift("SELECT -1"), None, "a folded sign after a keyword: nothing lifted");
    }

    #[test]
    fn comments_quoted_names_and_words_are_kept() {
        lifted(
            "/* shardcar: shard=s1 */ SELECT \"col 1\", c2 FROM t -- 'x' 5\nWHERE k = 5",
            "/* shardcar: shard=s1 */ SELECT \"col 1\", c2 FROM t -- 'x' 5\nWHERE k = $1",
            &["5"],
        );
    }

    #[test]
    fn what_the_lexer_does_not_model_is_not_lifted() {
        for sql in [
            "SELECT E'a\\'b'",
            "SELECT x'1f'",
            "SELECT U&'d\\0061t'",
            "SELECT $$a$$",
            "SELECT $tag$ 'a' $tag$",
            "SELECT 1e5",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT .5",
            "SELECT 'unterminated",
            "SELECT /* unterminated",
            "SELECT $1",
            "COMMIT",
        ] {
            assert_eq!(lift(sql), None, "{sql}");
        }
    }

    #[test]
    fn params_renumber_outside_quotes_and_comments() {
        let (sql, order) = renumber_params("SELECT $3, '$1', $3, \"$2\" /* $2 */, $1");
        assert_eq!(sql, "SELECT $1, '$1', $1, \"$2\" /* $2 */, $2");
        assert_eq!(order, [2, 0]);
    }
}
