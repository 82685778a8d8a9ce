//! SQL text → query facts, with the real Postgres grammar (pg_query).
//!
//! Facts are what routing and session tracking need to know about a
//! statement: what kind it is, its shape (tables, conditions, INSERT rows,
//! with `$n` parameters left as references), and the hints its comments
//! carry. They are computed once per distinct text and cached; parameters
//! are bound per execution.

pub mod comments;
pub mod lexer;
pub mod links;
pub mod params;
pub mod shape;

use std::sync::{Arc, OnceLock};

use pg_query::protobuf::{self, DiscardMode, OnCommitAction, TransactionStmtKind, VariableSetKind, node::Node as N};
use prometheus::IntCounter;
use quick_cache::sync::Cache;

pub use comments::Hints;
pub use shape::{Operand, Shape, Value, Verb};

use params::Params;

use crate::metrics::Metrics;
use crate::settings::{Change, Setting};

/// Everything shardcar knows about one SQL text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// One entry per statement in the text, in order.
    pub statements: Vec<Statement>,
    pub hints: Hints,
    /// The parser's message when it could not read the text. Such text still
    /// routes by hints and defaults; Postgres reports the syntax error.
    pub parse_error: Option<String>,
    /// The highest `$n` in the text (`None`: text the lexer does not model).
    pub highest_param: Option<usize>,
    /// The text with literals replaced by `$n` placeholders, made when first
    /// asked for (traces), off the data path.
    normalized: OnceLock<Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub kind: Kind,
    /// The statement's own text within the whole.
    pub text: String,
    pub shape: Shape,
}

/// What a statement does, as far as routing and session state care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Only reads: may run on a replica outside a transaction.
    Read,
    /// Changes data or schema, or may: runs on a primary.
    Write,
    /// BEGIN / START TRANSACTION.
    Begin,
    /// SET TRANSACTION ...: belongs to the transaction being opened.
    TransactionOption,
    Savepoint(String),
    Release(String),
    RollbackTo(String),
    /// COMMIT / END.
    Commit,
    /// ROLLBACK / ABORT.
    Rollback,
    /// A session-level SET/RESET, replayed on every connection the client uses.
    Session(Change),
    /// DISCARD ALL.
    DiscardAll,
    /// DEALLOCATE name, or DEALLOCATE ALL (`None`).
    Deallocate(Option<String>),
    /// SET/RESET shardcar.<name>: shardcar's own session variables.
    ShardcarSet {
        name: String,
        value: Option<String>,
    },
    /// SHOW shardcar.<name>.
    ShardcarShow(String),
    /// Cannot work behind a transaction pooler; refused with this reason.
    Unsupported {
        reason: String,
        hint: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleHint {
    Primary,
    Replica,
}

impl Facts {
    /// True when every statement only reads.
    pub fn is_read_only(&self) -> bool {
        self.parse_error.is_none()
            && !self.statements.is_empty()
            && self.statements.iter().all(|s| s.kind == Kind::Read)
    }

    /// The statements' text with literals replaced by placeholders; `None`
    /// when the parser cannot read it (its literals cannot be told apart).
    pub fn normalized(&self) -> Option<&str> {
        self.normalized
            .get_or_init(|| {
                if self.statements.is_empty() {
                    return None;
                }
                let text = self.statements.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join("; ");
                pg_query::normalize(&text).ok()
            })
            .as_deref()
    }

    /// The statement, when the text holds exactly one.
    pub fn single(&self) -> Option<&Statement> {
        match self.statements.as_slice() {
            [s] => Some(s),
            _ => None,
        }
    }
}

/// Parses SQL into facts; never fails (unreadable SQL yields `parse_error`).
pub fn classify(sql: &str) -> Facts {
    let hints = comments::hints(sql);
    let highest_param = lexer::highest_param(sql);
    match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(parsed) => Facts {
            statements: parsed
                .protobuf
                .stmts
                .iter()
                .map(|raw| {
                    let text = statement_text(sql, raw);
                    match raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
                        Some(node) => Statement { kind: kind(node, &text), shape: shape::shape(node), text },
                        None => Statement { kind: Kind::Write, shape: Shape::default(), text },
                    }
                })
                .collect(),
            hints,
            highest_param,
            ..Facts::default()
        },
        Err(e) => Facts { hints, parse_error: Some(e.to_string()), highest_param, ..Facts::default() },
    }
}

fn statement_text(sql: &str, raw: &protobuf::RawStmt) -> String {
    let start = usize::try_from(raw.stmt_location).unwrap_or(0).min(sql.len());
    // A length of 0 means "to the end of the string".
    let end = match usize::try_from(raw.stmt_len) {
        Ok(0) | Err(_) => sql.len(),
        Ok(len) => (start + len).min(sql.len()),
    };
    sql.get(start..end).unwrap_or(sql).trim().to_string()
}

fn kind(node: &N, text: &str) -> Kind {
    match node {
        N::SelectStmt(s) if let Some(change) = set_config(s, text) => Kind::Session(change),
        N::SelectStmt(s) if select_only_reads(s) && !calls_writing_function(node) => Kind::Read,
        N::VariableShowStmt(s) => match s.name.strip_prefix("shardcar.") {
            Some(name) => Kind::ShardcarShow(name.to_string()),
            None => Kind::Read,
        },
        N::ExplainStmt(e) => {
            let analyze = e.options.iter().any(|o| matches!(&o.node, Some(N::DefElem(d)) if d.defname == "analyze"));
            match e.query.as_ref().and_then(|q| q.node.as_ref()) {
                Some(q) if analyze => kind(q, text),
                _ => Kind::Read,
            }
        }
        N::CopyStmt(c) if !c.is_from => Kind::Read,
        N::TransactionStmt(t) => transaction(t),
        N::VariableSetStmt(v) => variable_set(v, text),
        N::DiscardStmt(d) if d.target == DiscardMode::DiscardAll as i32 => Kind::DiscardAll,
        N::DeallocateStmt(d) => Kind::Deallocate((!d.isall && !d.name.is_empty()).then(|| d.name.clone())),
        N::PrepareStmt(_) | N::ExecuteStmt(_) => Kind::Unsupported {
            reason: "SQL-level PREPARE/EXECUTE does not survive transaction pooling".into(),
            hint: "use your driver's prepared statements (protocol level); shardcar keeps them across connections"
                .into(),
        },
        // UNLISTEN is let through: no session can LISTEN here, so it has
        // nothing to undo (pools send it when resetting a connection).
        N::ListenStmt(_) => Kind::Unsupported {
            reason: "LISTEN needs a session of its own, which transaction pooling does not give".into(),
            hint: "LISTEN on a direct connection to the shard; NOTIFY works through shardcar".into(),
        },
        N::CreateStmt(c) if temporary(c.relation.as_ref()) && c.oncommit != OnCommitAction::OncommitDrop as i32 => {
            temp_table()
        }
        N::CreateTableAsStmt(c)
            if c.into
                .as_ref()
                .is_some_and(|i| temporary(i.rel.as_ref()) && i.on_commit != OnCommitAction::OncommitDrop as i32) =>
        {
            temp_table()
        }
        N::DeclareCursorStmt(d) if d.options & CURSOR_OPT_HOLD != 0 => Kind::Unsupported {
            reason: "a cursor WITH HOLD outlives its transaction and its connection's next user would see it".into(),
            hint: "declare the cursor without HOLD inside a transaction".into(),
        },
        // A cursor over a query reads as its query does.
        N::DeclareCursorStmt(d) => match d.query.as_ref().and_then(|q| q.node.as_ref()) {
            Some(q) => kind(q, text),
            None => Kind::Write,
        },
        _ => Kind::Write,
    }
}

/// `CURSOR_OPT_HOLD` in Postgres's parsenodes.h.
const CURSOR_OPT_HOLD: i32 = 0x0020;

fn temporary(rel: Option<&protobuf::RangeVar>) -> bool {
    rel.is_some_and(|r| r.relpersistence == "t")
}

fn temp_table() -> Kind {
    Kind::Unsupported {
        reason: "a temporary table outlives its transaction and its connection's next user would see it".into(),
        hint: "create it inside a transaction with ON COMMIT DROP".into(),
    }
}

/// A SELECT that cannot change anything: no locking clause, no INTO, no
/// data-modifying WITH.
fn select_only_reads(s: &protobuf::SelectStmt) -> bool {
    let side = |arm: &Option<Box<protobuf::SelectStmt>>| arm.as_deref().is_none_or(select_only_reads);
    let ctes_read = s.with_clause.as_ref().is_none_or(|w| {
        w.ctes.iter().all(|c| match &c.node {
            Some(N::CommonTableExpr(cte)) => {
                matches!(cte.ctequery.as_ref().and_then(|q| q.node.as_ref()), Some(N::SelectStmt(q)) if select_only_reads(q))
            }
            _ => true,
        })
    });
    s.locking_clause.is_empty() && s.into_clause.is_none() && ctes_read && side(&s.larg) && side(&s.rarg)
}

/// Functions that write or take session-level state; a SELECT calling one
/// must run on a primary.
const WRITING_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "set_config",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
    "lo_create",
    "lo_import",
    "lo_unlink",
];

fn calls_writing_function(node: &N) -> bool {
    node.nodes().iter().any(|(n, ..)| match n {
        pg_query::NodeRef::FuncCall(f) => f.funcname.last().is_some_and(|name| match &name.node {
            Some(N::String(s)) => {
                let name = s.sval.as_str();
                WRITING_FUNCTIONS.contains(&name)
                    || name.starts_with("pg_advisory")
                    || name.starts_with("pg_try_advisory")
            }
            _ => false,
        }),
        _ => false,
    })
}

/// `SELECT [pg_catalog.]set_config('name', value, false)` alone: a session
/// setting like SET (pg_dump sends it), followed to every connection the
/// session uses and never left behind on a pooled one.
fn set_config(s: &protobuf::SelectStmt, text: &str) -> Option<Change> {
    let [target] = s.target_list.as_slice() else { return None };
    let Some(N::ResTarget(t)) = &target.node else { return None };
    let Some(N::FuncCall(f)) = t.val.as_ref().and_then(|v| v.node.as_ref()) else { return None };
    let is_set_config =
        f.funcname.last().is_some_and(|n| matches!(&n.node, Some(N::String(s)) if s.sval == "set_config"));
    let [name, value, local] = f.args.as_slice() else { return None };
    let session_wide = matches!(constant_text(local.node.as_ref()).as_deref(), Some("false"));
    // Replayed as written on other connections: only constants can be.
    let constant = constant_text(value.node.as_ref()).is_some();
    if !is_set_config || !session_wide || !constant || !s.from_clause.is_empty() {
        return None;
    }
    let name = constant_text(name.node.as_ref())?;
    Some(Change::Set { setting: Setting { set_sql: text.to_string(), reset_sql: format!("RESET {name}") }, name })
}

fn transaction(t: &protobuf::TransactionStmt) -> Kind {
    match TransactionStmtKind::try_from(t.kind) {
        Ok(TransactionStmtKind::TransStmtBegin | TransactionStmtKind::TransStmtStart) => Kind::Begin,
        Ok(TransactionStmtKind::TransStmtCommit) if !t.chain => Kind::Commit,
        Ok(TransactionStmtKind::TransStmtRollback) if !t.chain => Kind::Rollback,
        Ok(TransactionStmtKind::TransStmtSavepoint) => Kind::Savepoint(t.savepoint_name.clone()),
        Ok(TransactionStmtKind::TransStmtRelease) => Kind::Release(t.savepoint_name.clone()),
        Ok(TransactionStmtKind::TransStmtRollbackTo) => Kind::RollbackTo(t.savepoint_name.clone()),
        _ => Kind::Write,
    }
}

fn variable_set(v: &protobuf::VariableSetStmt, text: &str) -> Kind {
    let set_kind = VariableSetKind::try_from(v.kind).unwrap_or(VariableSetKind::Undefined);
    if let Some(name) = v.name.strip_prefix("shardcar.") {
        let value = match set_kind {
            VariableSetKind::VarSetValue => v.args.first().and_then(|a| constant_text(a.node.as_ref())),
            _ => None,
        };
        return Kind::ShardcarSet { name: name.to_string(), value };
    }
    if v.is_local {
        // Transaction-scoped: nothing outlives the transaction.
        return Kind::Write;
    }
    let name = v.name.clone();
    match set_kind {
        VariableSetKind::VarSetValue | VariableSetKind::VarSetCurrent => Kind::Session(Change::Set {
            setting: Setting { set_sql: text.to_string(), reset_sql: format!("RESET {name}") },
            name,
        }),
        VariableSetKind::VarSetDefault | VariableSetKind::VarReset => Kind::Session(Change::Reset { name }),
        VariableSetKind::VarResetAll => Kind::Session(Change::ResetAll),
        VariableSetKind::VarSetMulti if name == "TRANSACTION" => Kind::TransactionOption,
        VariableSetKind::VarSetMulti if name == "SESSION CHARACTERISTICS" => Kind::Session(Change::Set {
            name: "session characteristics".into(),
            setting: Setting {
                set_sql: text.to_string(),
                reset_sql: "RESET default_transaction_isolation; RESET default_transaction_read_only; \
                            RESET default_transaction_deferrable"
                    .into(),
            },
        }),
        _ => Kind::Write,
    }
}

fn constant_text(node: Option<&N>) -> Option<String> {
    match node? {
        N::AConst(c) => match c.val.as_ref()? {
            protobuf::a_const::Val::Sval(s) => Some(s.sval.clone()),
            protobuf::a_const::Val::Ival(i) => Some(i.ival.to_string()),
            protobuf::a_const::Val::Fval(f) => Some(f.fval.clone()),
            protobuf::a_const::Val::Boolval(b) => Some(b.boolval.to_string()),
            protobuf::a_const::Val::Bsval(s) => Some(s.bsval.clone()),
        },
        // `SET shardcar.shard TO s1` parses the bare word as a name.
        N::String(s) => Some(s.sval.clone()),
        _ => None,
    }
}

/// Texts longer than this are classified every time, never cached: one
/// such statement would push out thousands of ordinary ones.
const UNCACHED_TEXT: usize = 64 * 1024;

/// Facts per distinct SQL text, bounded by the bytes they hold.
pub struct FactsCache {
    cache: Cache<String, Arc<Facts>, TextWeight>,
    hits: IntCounter,
    misses: IntCounter,
}

/// An entry's estimated memory: the text (as key and within each
/// statement's facts) and a fixed part for the rest of the facts.
#[derive(Clone)]
pub struct TextWeight;

impl quick_cache::Weighter<String, Arc<Facts>> for TextWeight {
    fn weight(&self, key: &String, facts: &Arc<Facts>) -> u64 {
        let texts: usize = facts.statements.iter().map(|s| s.text.len()).sum();
        (key.len() + texts + 512) as u64
    }
}

impl FactsCache {
    /// A cache holding about `bytes` of texts and their facts.
    pub fn new(bytes: u64, metrics: &Metrics) -> FactsCache {
        FactsCache {
            cache: Cache::with_weighter((bytes / 1024) as usize, bytes, TextWeight),
            hits: metrics.parse_cache_hits.clone(),
            misses: metrics.parse_cache_misses.clone(),
        }
    }

    /// Estimated bytes held.
    pub fn weight(&self) -> u64 {
        self.cache.weight()
    }

    pub fn get(&self, sql: &str) -> Arc<Facts> {
        self.lookup(sql).0
    }

    /// The facts of `sql`, and whether they were cached. A trailing
    /// sqlcommenter comment is not part of the cached text: its pairs are
    /// added to a copy of the cached facts.
    pub fn lookup(&self, sql: &str) -> (Arc<Facts>, bool) {
        let (text, trailing) = comments::split_sqlcommenter(sql);
        let (facts, hit) = match self.cache.get(text) {
            Some(f) => {
                self.hits.inc();
                (f, true)
            }
            None => {
                self.misses.inc();
                let facts = Arc::new(classify(text));
                if text.len() <= UNCACHED_TEXT {
                    self.cache.insert(text.to_string(), facts.clone());
                }
                (facts, false)
            }
        };
        match trailing {
            Some(pairs) => {
                let mut with_pairs = Facts::clone(&facts);
                with_pairs.hints.pairs.extend(pairs);
                (Arc::new(with_pairs), hit)
            }
            None => (facts, hit),
        }
    }

    /// The facts a simple query routes by, shared with every query that
    /// differs from it only in literal values: those of its text with the
    /// literals lifted out as `$n`, and the literals as text parameters.
    /// `None` when the text cannot be lifted, has no literals, or its
    /// template is not one plain read or write (such text is classified as
    /// written: for DDL, COPY and the rest the literals matter).
    pub fn lookup_lifted(&self, sql: &str) -> Option<(Arc<Facts>, Arc<Params>)> {
        let (template, values) = lexer::lift_literals(sql)?;
        // set_config's literals are the setting it changes (see `set_config`).
        if values.is_empty() || template.contains("set_config") {
            return None;
        }
        let (facts, _) = self.lookup(&template);
        let plain = facts.parse_error.is_none()
            && facts.single().is_some_and(|s| {
                matches!(s.kind, Kind::Read | Kind::Write) && !matches!(s.shape.verb, Verb::Ddl | Verb::Copy)
            });
        let values = values.into_iter().map(|v| Some(bytes::Bytes::from(v))).collect();
        plain.then(|| (facts, Arc::new(Params { values, ..Params::default() })))
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<Kind> {
        classify(sql).statements.into_iter().map(|s| s.kind).collect()
    }

    #[test]
    fn reads_and_writes() {
        assert_eq!(kinds("SELECT * FROM t WHERE id = 1"), [Kind::Read]);
        assert_eq!(kinds("SELECT 1 UNION SELECT 2"), [Kind::Read]);
        assert_eq!(kinds("SELECT * FROM t FOR UPDATE"), [Kind::Write]);
        assert_eq!(kinds("SELECT * INTO t2 FROM t"), [Kind::Write]);
        assert_eq!(kinds("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x"), [Kind::Write]);
        assert_eq!(kinds("SELECT nextval('s')"), [Kind::Write]);
        assert_eq!(kinds("SELECT pg_advisory_lock(1)"), [Kind::Write]);
        assert_eq!(kinds("INSERT INTO t VALUES (1)"), [Kind::Write]);
        assert_eq!(kinds("COPY t TO STDOUT"), [Kind::Read]);
        assert_eq!(kinds("COPY t FROM STDIN"), [Kind::Write]);
        assert_eq!(kinds("SHOW search_path"), [Kind::Read]);
        assert_eq!(kinds("EXPLAIN ANALYZE DELETE FROM t"), [Kind::Write]);
    }

    #[test]
    fn transaction_control() {
        assert_eq!(
            kinds("BEGIN ISOLATION LEVEL SERIALIZABLE; SAVEPOINT a; RELEASE a; ROLLBACK TO SAVEPOINT a; COMMIT; ABORT"),
            [
                Kind::Begin,
                Kind::Savepoint("a".into()),
                Kind::Release("a".into()),
                Kind::RollbackTo("a".into()),
                Kind::Commit,
                Kind::Rollback
            ]
        );
        assert_eq!(kinds("START TRANSACTION READ ONLY"), [Kind::Begin]);
        assert_eq!(kinds("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"), [Kind::TransactionOption]);
        assert_eq!(kinds("COMMIT AND CHAIN"), [Kind::Write]);
    }

    #[test]
    fn session_settings_are_replayable_statements() {
        let f = classify("SET search_path = app, public; SET LOCAL work_mem = '1MB'; RESET ALL");
        assert_eq!(
            f.statements[0].kind,
            Kind::Session(Change::Set {
                name: "search_path".into(),
                setting: Setting {
                    set_sql: "SET search_path = app, public".into(),
                    reset_sql: "RESET search_path".into()
                }
            })
        );
        assert_eq!(f.statements[1].kind, Kind::Write);
        assert_eq!(f.statements[2].kind, Kind::Session(Change::ResetAll));
        assert_eq!(kinds("SET TIME ZONE DEFAULT"), [Kind::Session(Change::Reset { name: "timezone".into() })]);
    }

    #[test]
    fn shardcar_variables() {
        assert_eq!(
            kinds("SET shardcar.shard = 's1'"),
            [Kind::ShardcarSet { name: "shard".into(), value: Some("s1".into()) }]
        );
        assert_eq!(
            kinds("SET shardcar.shard TO s1"),
            [Kind::ShardcarSet { name: "shard".into(), value: Some("s1".into()) }]
        );
        assert_eq!(kinds("RESET shardcar.shard"), [Kind::ShardcarSet { name: "shard".into(), value: None }]);
        assert_eq!(kinds("SHOW shardcar.shard"), [Kind::ShardcarShow("shard".into())]);
    }

    #[test]
    fn refused_statements() {
        for sql in [
            "LISTEN x",
            "PREPARE p AS SELECT 1",
            "EXECUTE p",
            "CREATE TEMP TABLE t (a int)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        ] {
            assert!(matches!(kinds(sql)[..], [Kind::Unsupported { .. }]), "{sql}");
        }
        assert_eq!(kinds("CREATE TEMP TABLE t (a int) ON COMMIT DROP"), [Kind::Write]);
        // A cursor reads as its query does, and routes by its conditions.
        assert_eq!(kinds("DECLARE c CURSOR FOR SELECT * FROM t WHERE k = 1"), [Kind::Read]);
        assert_eq!(kinds("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE"), [Kind::Write]);
        let sql = "DECLARE c NO SCROLL CURSOR FOR SELECT * FROM t WHERE k = 1";
        let declared = classify(sql);
        let shape = &declared.statements[0].shape;
        let plain = shape::Declared { name: "c".into(), scroll: false, binary: false };
        assert!(shape.cursor == Some(plain) && shape.verb == Verb::Select && shape.tables == ["t"]);
        assert_eq!(shape.predicates.len(), 1);
        assert_eq!(shape::cursor_query(sql), Some("SELECT * FROM t WHERE k = 1"));
        let sql = "DECLARE \"for\" BINARY SCROLL CURSOR WITHOUT HOLD\nFOR\tSELECT 'for' FROM t FOR UPDATE";
        assert_eq!(shape::cursor_query(sql), Some("SELECT 'for' FROM t FOR UPDATE"));
        let options = classify(sql).statements[0].shape.cursor.clone().unwrap();
        assert!(options.scroll && options.binary && options.name == "for");
        use shape::CursorOp::{Close, Fetch};
        for (sql, op) in [
            ("FETCH FORWARD 5 FROM c", Fetch { forward: Some(5), is_move: false }),
            ("FETCH c", Fetch { forward: Some(1), is_move: false }),
            ("FETCH ALL IN c", Fetch { forward: Some(u64::MAX), is_move: false }),
            ("MOVE 2 IN c", Fetch { forward: Some(2), is_move: true }),
            ("FETCH PRIOR FROM c", Fetch { forward: None, is_move: false }),
            ("FETCH ABSOLUTE 3 FROM c", Fetch { forward: None, is_move: false }),
            ("FETCH FORWARD 0 FROM c", Fetch { forward: None, is_move: false }),
            ("MOVE BACKWARD ALL IN c", Fetch { forward: None, is_move: true }),
            ("CLOSE c", Close),
        ] {
            let used = classify(sql).statements[0].shape.uses_cursor.clone();
            assert_eq!(used, Some(shape::CursorUse { name: "c".into(), op }), "{sql}");
        }
        assert_eq!(kinds("DEALLOCATE ALL"), [Kind::Deallocate(None)]);
        assert_eq!(kinds("DEALLOCATE p1"), [Kind::Deallocate(Some("p1".into()))]);
        assert_eq!(kinds("DISCARD ALL"), [Kind::DiscardAll]);
    }

    #[test]
    fn set_config_for_the_session_is_a_setting() {
        let sql = "SELECT pg_catalog.set_config('search_path', '', false)";
        match &kinds(sql)[..] {
            [Kind::Session(Change::Set { name, setting })] => {
                assert_eq!(name, "search_path");
                assert_eq!(setting.set_sql, sql);
            }
            other => panic!("{other:?}"),
        }
        // Transaction-local, or with other columns: not a session setting.
        assert_eq!(kinds("SELECT set_config('search_path', '', true)"), [Kind::Write]);
        assert!(!matches!(kinds("SELECT set_config('a', 'b', false), 1")[..], [Kind::Session(_)]));
        assert!(!matches!(kinds("SELECT set_config('a', $1, false)")[..], [Kind::Session(_)]), "not replayable");
        assert!(
            FactsCache::new(1 << 20, &Default::default()).lookup_lifted(sql).is_none(),
            "not lifted into a template"
        );
    }

    #[test]
    fn unreadable_sql_keeps_hints() {
        let f = classify("/* shardcar: shard=s1 */ SELEKT 1");
        assert!(f.parse_error.is_some());
        assert_eq!(f.hints.shard.as_deref(), Some("s1"));
        assert!(!f.is_read_only());
    }
}
