//! Routing hints carried in SQL comments: shardcar's own
//! `/* shardcar: shard=s1, role=primary, tenant=acme */` anywhere in the
//! text, and a trailing sqlcommenter comment (`/*tenant='acme',traceparent='...'*/`).
//! Comments are found with the SQL scanner, so text inside string literals
//! never counts.

use pg_query::protobuf;

use super::RoleHint;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// `shard=` from a shardcar comment.
    pub shard: Option<String>,
    /// `role=` from a shardcar comment.
    pub role: Option<RoleHint>,
    /// Every key/value pair, from shardcar and sqlcommenter comments, for plugins.
    pub pairs: Vec<(String, String)>,
    /// Hints that could not be understood; the statement is refused with these.
    pub errors: Vec<String>,
}

pub fn hints(sql: &str) -> Hints {
    let mut hints = Hints::default();
    let trimmed = sql.trim_end_matches(|c: char| c.is_whitespace() || c == ';');
    let mentions_shardcar = sql.as_bytes().windows(8).any(|w| w.eq_ignore_ascii_case(b"shardcar"));
    if !mentions_shardcar && !trimmed.ends_with("*/") {
        return hints;
    }
    let Ok(scan) = pg_query::scan(sql) else { return hints };
    for token in scan.tokens.iter().filter(|t| t.token == protobuf::Token::CComment as i32) {
        let Some(comment) = sql.get(token.start as usize..token.end as usize) else { continue };
        let body = comment.trim_start_matches("/*").trim_end_matches("*/").trim();
        if let Some(rest) = body.strip_prefix("shardcar:") {
            shardcar_pairs(rest, &mut hints);
        } else if token.end as usize == trimmed.len()
            && let Some(pairs) = sqlcommenter_pairs(body)
        {
            hints.pairs.extend(pairs);
        }
    }
    hints
}

fn shardcar_pairs(text: &str, hints: &mut Hints) {
    for pair in text.split([',', ' ', '\t', '\n']).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            hints.errors.push(format!("`{pair}` is not key=value"));
            continue;
        };
        let (key, value) = (key.trim(), value.trim_matches(['\'', '"']));
        match key {
            "shard" => match &hints.shard {
                Some(old) if old != value => {
                    hints.errors.push(format!("two different shard hints: `{old}` and `{value}`"))
                }
                _ => hints.shard = Some(value.to_string()),
            },
            "role" => match value {
                "primary" => hints.role = Some(RoleHint::Primary),
                "replica" => hints.role = Some(RoleHint::Replica),
                other => hints.errors.push(format!("role `{other}` is neither primary nor replica")),
            },
            _ => {}
        }
        hints.pairs.push((key.to_string(), value.to_string()));
    }
}

/// Splits a trailing sqlcommenter comment off `sql`: the text before it,
/// and its pairs. Applications put a new `traceparent` in every statement;
/// without the split, no statement text would ever repeat and the parse
/// cache would miss every time. Anything unusual (two trailing comments, a
/// shardcar comment, another format) is left whole.
pub fn split_sqlcommenter(sql: &str) -> (&str, Option<Vec<(String, String)>>) {
    let trimmed = sql.trim_end_matches(|c: char| c.is_whitespace() || c == ';');
    let Some(start) = trimmed.strip_suffix("*/").and_then(|t| t.rfind("/*")) else { return (sql, None) };
    let body = trimmed[start + 2..trimmed.len() - 2].trim();
    let before = &sql[..start];
    if body.contains("*/") || body.starts_with("shardcar:") || before.trim_end().ends_with("*/") {
        return (sql, None);
    }
    match sqlcommenter_pairs(body) {
        Some(pairs) => (before, Some(pairs)),
        None => (sql, None),
    }
}

/// `key='value',...` with URL-encoded keys and values (sqlcommenter's
/// format); `None` when the comment is not in that format.
fn sqlcommenter_pairs(body: &str) -> Option<Vec<(String, String)>> {
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    body.split(',')
        .map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            let value = value.strip_prefix('\'')?.strip_suffix('\'')?.replace("\\'", "'");
            Some((decode(key), decode(&value)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shardcar_comments_anywhere_and_not_in_strings() {
        let h = hints("/* shardcar: shard=s1, role=primary, tenant=acme */ SELECT 1");
        assert_eq!(h.shard.as_deref(), Some("s1"));
        assert_eq!(h.role, Some(RoleHint::Primary));
        assert!(h.pairs.contains(&("tenant".into(), "acme".into())));
        assert_eq!(hints("SELECT '/* shardcar: shard=s1 */'"), Hints::default());
        assert_eq!(hints("SELECT 1 /* shardcar: role=leader */").errors.len(), 1);
    }

    #[test]
    fn trailing_sqlcommenter_comment_is_decoded() {
        let h = hints("SELECT * FROM t /*action='list%20orders',tenant='acme',tracestate='rojo%3D00f067aa0ba902b7'*/;");
        assert_eq!(
            h.pairs,
            [
                ("action".to_string(), "list orders".to_string()),
                ("tenant".into(), "acme".into()),
                ("tracestate".into(), "rojo=00f067aa0ba902b7".into())
            ]
        );
        // Only the trailing comment counts, and only in that format.
        assert!(hints("/*tenant='acme'*/ SELECT 1").pairs.is_empty());
        assert!(hints("SELECT 1 /* just a note */").pairs.is_empty());
    }

    #[test]
    fn the_trailing_sqlcommenter_comment_splits_off_like_hints_reads_it() {
        for sql in [
            "SELECT * FROM t WHERE id = 1 /*traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/;",
            "SELECT '/*x*/' /*tenant='acme',action='a%2Fb'*/",
        ] {
            let (before, pairs) = split_sqlcommenter(sql);
            assert!(!before.contains("/*t") && !before.contains("/*tenant"), "{before}");
            assert_eq!(pairs.unwrap(), hints(sql).pairs, "{sql}");
        }
        for whole in [
            "SELECT 1",
            "SELECT 1 /* just a note */",
            "SELECT 1 /* shardcar: shard=s1 */",
            "SELECT 1 /*a='1'*/ /*b='2'*/",
            "SELECT 1 /* outer /*a='1'*/ */",
        ] {
            assert_eq!(split_sqlcommenter(whole), (whole, None), "{whole}");
        }
    }
}
