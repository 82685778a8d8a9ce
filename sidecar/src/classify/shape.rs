//! The shape of a statement that routing cares about: the tables it names,
//! `column = value` / `column IN (...)` conditions from the top-level AND of
//! its WHERE clause, the rows of an INSERT ... VALUES, and the columns an
//! UPDATE sets. Values are literals or `$n` parameters bound per execution.

use std::collections::HashMap;

use pg_query::protobuf::{self, AExprKind, BoolExprType, a_const, node::Node as N};

/// A SQL value in canonical-enough form: integers as integers, the rest as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

/// One side of a condition or one INSERT value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Const(Value),
    /// `$n`, zero-based.
    Param(usize),
    /// An expression whose value is unknown before the server evaluates it.
    Opaque,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Predicate {
    /// The table the column belongs to; `None` when unqualified and several
    /// tables are in scope.
    pub table: Option<String>,
    pub column: String,
    pub operands: Vec<Operand>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Insert {
    pub table: String,
    pub columns: Vec<String>,
    /// One operand per column, per VALUES row (of `INSERT ... VALUES`, or
    /// of `INSERT ... SELECT ... FROM (VALUES ...) AS v(...)`); empty for
    /// another INSERT ... SELECT.
    pub rows: Vec<Vec<Operand>>,
    /// `INSERT ... SELECT ... FROM unnest($1, $2, ...)`: one row per element
    /// of the bound arrays.
    pub from_unnest: Option<Unnest>,
    /// It has RETURNING, its rows are inserted in the order given, and none
    /// is skipped (ON CONFLICT leaves no trace of which were): split by
    /// shard, its RETURNING rows can be given back in that order.
    pub in_order: bool,
    /// `... FROM (VALUES ...) AS v(...) ORDER BY <a column of v>`: that
    /// column's value per row, which must rise row by row for the rows to
    /// be inserted in the order written (checked once they are bound).
    pub sorted_by: Vec<Operand>,
}

/// Where the rows of an `INSERT ... SELECT ... FROM unnest(...)` come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unnest {
    /// The arrays unnested: their parameters (0-based), in order.
    pub arrays: Vec<usize>,
    /// Per inserted column, the array (index into `arrays`) whose elements
    /// it takes as they are; `None` for a column computed otherwise.
    pub columns: Vec<Option<usize>>,
}

/// A `COPY table [(columns)] FROM STDIN`, as far as splitting its rows needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyIn {
    pub table: String,
    /// Empty: every column, in the table's order.
    pub columns: Vec<String>,
    /// `text`, `csv` or `binary`.
    pub format: String,
    pub delimiter: Option<String>,
    pub header: bool,
    pub null: Option<String>,
    pub quote: Option<String>,
    pub escape: Option<String>,
    pub force_not_null: Vec<String>,
    pub force_null: Vec<String>,
    pub encoding: Option<String>,
}

/// What a statement does, for plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Verb {
    Select,
    Insert,
    Update,
    Delete,
    Copy,
    Ddl,
    #[default]
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Shape {
    pub verb: Verb,
    /// Tables named, in order of appearance, without duplicates.
    pub tables: Vec<String>,
    pub predicates: Vec<Predicate>,
    pub insert: Option<Insert>,
    /// Columns an UPDATE assigns.
    pub updated: Vec<String>,
    pub copy_in: Option<CopyIn>,
    /// A COPY FROM (STDIN, a server file or a program).
    pub copy_from: bool,
    /// Every table it names is a system catalog or an information_schema
    /// view: it asks about the schema, not the data.
    pub catalog: bool,
    /// `DECLARE <name> ... CURSOR FOR` this query: its rows are fetched
    /// later, from where the cursor is held.
    pub cursor: Option<Declared>,
    /// `FETCH`, `MOVE` or `CLOSE` of a cursor: it goes where the cursor is.
    pub uses_cursor: Option<CursorUse>,
    /// The tables a query reads together and how they are joined, when it
    /// reads more than one or computes over sets below its top level.
    pub links: Option<std::sync::Arc<super::links::Links>>,
}

/// A cursor being declared.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Declared {
    pub name: String,
    /// `SCROLL`: it may be read backwards.
    pub scroll: bool,
    /// `BINARY`: its rows come in binary.
    pub binary: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorUse {
    pub name: String,
    pub op: CursorOp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorOp {
    /// FETCH (or MOVE) of the next `forward` rows (`u64::MAX`: all);
    /// `None` for any other direction (backwards, absolute, relative, or
    /// the current row again).
    Fetch {
        forward: Option<u64>,
        is_move: bool,
    },
    Close,
}

/// The text of the query a `DECLARE ... CURSOR FOR` statement declares:
/// what follows its `FOR` (a reserved word, so the first one as a word).
pub fn cursor_query(sql: &str) -> Option<&str> {
    let mut words = super::lexer::tokens(sql).filter(|(t, _)| *t == super::lexer::Token::Word);
    let (_, at) = words.find(|(_, r)| sql[r.clone()].eq_ignore_ascii_case("for"))?;
    Some(sql[at.end..].trim())
}

impl Shape {
    /// An INSERT into `table` that lists no columns: its values follow the
    /// table's column order.
    pub fn inserts_without_columns(&self, table: &str) -> bool {
        self.insert.as_ref().is_some_and(|i| i.table == table && i.columns.is_empty())
    }

    /// The operands compared with (or inserted into) `table.column`;
    /// `position` is the column's place in the table, for INSERTs without a
    /// column list.
    pub fn operands_for<'a>(
        &'a self,
        table: &'a str,
        column: &'a str,
        position: Option<usize>,
    ) -> impl Iterator<Item = &'a Operand> + 'a {
        let from_where = self
            .predicates
            .iter()
            .filter(move |p| p.column == column && p.table.as_deref().is_none_or(|t| t == table))
            .flat_map(|p| p.operands.iter());
        let from_insert = self.insert.iter().filter(move |i| i.table == table).flat_map(move |i| {
            let at = if i.columns.is_empty() { position } else { i.columns.iter().position(|c| c == column) };
            i.rows.iter().filter_map(move |row| at.and_then(|at| row.get(at)))
        });
        from_where.chain(from_insert)
    }
}

pub fn shape(node: &N) -> Shape {
    if let N::DeclareCursorStmt(d) = node
        && let Some(query) = d.query.as_ref().and_then(|q| q.node.as_ref())
    {
        // pg_query's CURSOR_OPT_BINARY and CURSOR_OPT_SCROLL.
        let declared =
            Declared { name: d.portalname.clone(), binary: d.options & 0x1 != 0, scroll: d.options & 0x2 != 0 };
        return Shape { cursor: Some(declared), ..shape(query) };
    }
    let (mut tables, mut catalog) = tables(node);
    let query = match node {
        N::CopyStmt(c) if !c.is_from => c.query.as_ref().and_then(|q| q.node.as_ref()),
        other => Some(other),
    };
    let links = query.and_then(super::links::Links::of);
    // The links' walk reaches tables the generic one does not (inside
    // ARRAY[...], FILTER, window definitions).
    for a in links.iter().flat_map(|l| &l.appearances) {
        if !tables.contains(&a.table) {
            catalog &= a.is_catalog();
            tables.push(a.table.clone());
        }
    }
    let links = links.map(std::sync::Arc::new);
    let mut shape = Shape { verb: verb(node), tables, catalog, links, ..Shape::default() };
    match node {
        N::FetchStmt(f) => {
            let forward = (f.direction == pg_query::protobuf::FetchDirection::FetchForward as i32 && f.how_many > 0)
                .then_some(if f.how_many == i64::MAX { u64::MAX } else { f.how_many as u64 });
            let op = CursorOp::Fetch { forward, is_move: f.ismove };
            shape.uses_cursor = Some(CursorUse { name: f.portalname.clone(), op });
        }
        N::ClosePortalStmt(c) if !c.portalname.is_empty() => {
            shape.uses_cursor = Some(CursorUse { name: c.portalname.clone(), op: CursorOp::Close });
        }
        _ => {}
    }
    match node {
        N::SelectStmt(s) => {
            let scope = Scope::from_from(&s.from_clause);
            conditions(s.where_clause.as_deref(), &scope, &mut shape.predicates);
        }
        N::UpdateStmt(u) => {
            let mut scope = Scope::from_from(&u.from_clause);
            scope.add(u.relation.as_ref());
            conditions(u.where_clause.as_deref(), &scope, &mut shape.predicates);
            shape.updated = u
                .target_list
                .iter()
                .filter_map(|t| match &t.node {
                    Some(N::ResTarget(r)) => Some(r.name.clone()),
                    _ => None,
                })
                .collect();
        }
        N::DeleteStmt(d) => {
            let mut scope = Scope::from_from(&d.using_clause);
            scope.add(d.relation.as_ref());
            conditions(d.where_clause.as_deref(), &scope, &mut shape.predicates);
        }
        N::InsertStmt(i) => shape.insert = insert(i),
        N::CopyStmt(c) if c.is_from => {
            shape.copy_from = true;
            if !c.is_program && c.filename.is_empty() {
                shape.copy_in = c.relation.as_ref().map(|r| copy_in(r, c));
            }
        }
        // COPY (SELECT ...) TO: routed by the conditions of its query.
        N::CopyStmt(c) if !c.is_from => {
            if let Some(N::SelectStmt(s)) = c.query.as_ref().and_then(|q| q.node.as_ref()) {
                let scope = Scope::from_from(&s.from_clause);
                conditions(s.where_clause.as_deref(), &scope, &mut shape.predicates);
            }
        }
        _ => {}
    }
    shape
}

fn copy_in(relation: &protobuf::RangeVar, c: &protobuf::CopyStmt) -> CopyIn {
    let columns = c
        .attlist
        .iter()
        .filter_map(|n| match &n.node {
            Some(N::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect();
    let mut copy = CopyIn {
        table: relation.relname.clone(),
        columns,
        format: "text".into(),
        delimiter: None,
        header: false,
        null: None,
        quote: None,
        escape: None,
        force_not_null: Vec::new(),
        force_null: Vec::new(),
        encoding: None,
    };
    for option in &c.options {
        let Some(N::DefElem(d)) = &option.node else { continue };
        let node = d.arg.as_deref().and_then(|a| a.node.as_ref());
        let arg = match node {
            Some(N::String(s)) => Some(s.sval.clone()),
            Some(N::Boolean(b)) => Some(b.boolval.to_string()),
            Some(N::Integer(i)) => Some(i.ival.to_string()),
            _ => None,
        };
        // FORCE_NOT_NULL (a, b): a list of column names.
        let names = || match node {
            Some(N::List(l)) => l
                .items
                .iter()
                .filter_map(|n| match &n.node {
                    Some(N::String(s)) => Some(s.sval.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        match d.defname.as_str() {
            "format" => copy.format = arg.unwrap_or_default().to_lowercase(),
            "delimiter" => copy.delimiter = arg,
            "header" => copy.header = !matches!(arg.as_deref(), Some("false" | "off" | "0")),
            "null" => copy.null = arg,
            "quote" => copy.quote = arg,
            "escape" => copy.escape = arg,
            "force_not_null" => copy.force_not_null = names(),
            "force_null" => copy.force_null = names(),
            "encoding" => copy.encoding = arg,
            _ => {}
        }
    }
    copy
}

fn verb(node: &N) -> Verb {
    match node {
        N::SelectStmt(_) => Verb::Select,
        N::InsertStmt(_) => Verb::Insert,
        N::UpdateStmt(_) => Verb::Update,
        N::DeleteStmt(_) => Verb::Delete,
        N::CopyStmt(_) => Verb::Copy,
        // A temporary table lives on the session's own connection, not in
        // the schema every shard shares.
        N::CreateStmt(c) if c.relation.as_ref().is_some_and(|r| r.relpersistence == "t") => Verb::Other,
        N::CreateTableAsStmt(c)
            if c.into.as_ref().and_then(|i| i.rel.as_ref()).is_some_and(|r| r.relpersistence == "t") =>
        {
            Verb::Other
        }
        N::CreateStmt(_)
        | N::AlterTableStmt(_)
        | N::DropStmt(_)
        | N::IndexStmt(_)
        | N::TruncateStmt(_)
        | N::CreateTableAsStmt(_)
        | N::ViewStmt(_)
        | N::CreateSeqStmt(_)
        | N::AlterSeqStmt(_)
        | N::RenameStmt(_)
        | N::CommentStmt(_)
        | N::CreateSchemaStmt(_)
        | N::CreateEnumStmt(_)
        | N::CreateFunctionStmt(_)
        | N::CreateTrigStmt(_)
        | N::CreateExtensionStmt(_)
        | N::GrantStmt(_)
        // Maintenance: each shard vacuums and analyzes its own rows.
        | N::VacuumStmt(_)
        // A table's rows live on every shard: so do its locks (pg_dump).
        | N::LockStmt(_) => Verb::Ddl,
        _ => Verb::Other,
    }
}

/// Every table a statement names (FROM, JOIN, subqueries, DML targets),
/// and whether all of them are catalogs (see `Shape::catalog`).
fn tables(node: &N) -> (Vec<String>, bool) {
    let mut out: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        if !out.iter().any(|t| t == name) {
            out.push(name.to_string());
        }
    };
    let mut catalog = matches!(node, N::SelectStmt(_));
    for (n, ..) in node.nodes() {
        if let pg_query::NodeRef::RangeVar(r) = n {
            add(&r.relname);
            catalog &= super::links::is_catalog(&r.schemaname, &r.relname);
        }
    }
    // The walker does not visit every statement's own target relation.
    let target = match node {
        N::CopyStmt(c) => c.relation.as_ref(),
        N::TruncateStmt(_) | N::DropStmt(_) => None,
        N::AlterTableStmt(a) => a.relation.as_ref(),
        N::IndexStmt(i) => i.relation.as_ref(),
        N::CreateStmt(c) => c.relation.as_ref(),
        _ => None,
    };
    if let Some(r) = target {
        add(&r.relname);
    }
    let catalog = catalog && !out.is_empty();
    (out, catalog)
}

/// Table names by the name a query refers to them with (alias or name).
struct Scope {
    by_name: HashMap<String, String>,
    tables: Vec<String>,
}

impl Scope {
    fn from_from(from: &[protobuf::Node]) -> Scope {
        let mut scope = Scope { by_name: HashMap::new(), tables: Vec::new() };
        for item in from {
            scope.add_item(item.node.as_ref());
        }
        scope
    }

    fn add_item(&mut self, node: Option<&N>) {
        match node {
            Some(N::RangeVar(r)) => self.add(Some(r)),
            Some(N::JoinExpr(j)) => {
                self.add_item(j.larg.as_deref().and_then(|n| n.node.as_ref()));
                self.add_item(j.rarg.as_deref().and_then(|n| n.node.as_ref()));
            }
            _ => {}
        }
    }

    fn add(&mut self, r: Option<&protobuf::RangeVar>) {
        let Some(r) = r else { return };
        let refname = r.alias.as_ref().map_or(r.relname.as_str(), |a| a.aliasname.as_str());
        self.by_name.insert(refname.to_string(), r.relname.clone());
        self.tables.push(r.relname.clone());
    }

    /// The table a column reference belongs to.
    fn resolve(&self, qualifier: Option<&str>) -> Option<String> {
        match qualifier {
            // Not a table of this FROM (a subquery's alias): no table's column.
            Some(q) => Some(self.by_name.get(q).cloned().unwrap_or_default()),
            None if self.tables.len() == 1 => self.tables.first().cloned(),
            None => None,
        }
    }
}

/// Conditions from the top-level AND of a WHERE clause.
fn conditions(node: Option<&protobuf::Node>, scope: &Scope, out: &mut Vec<Predicate>) {
    let Some(node) = node.and_then(|n| n.node.as_ref()) else { return };
    match node {
        N::BoolExpr(b) if b.boolop == BoolExprType::AndExpr as i32 => {
            for arg in &b.args {
                conditions(Some(arg), scope, out);
            }
        }
        N::AExpr(e) => {
            if let Some(p) = comparison(e, scope) {
                out.push(p);
            }
        }
        _ => {}
    }
}

/// `col = x`, `x = col` or `col IN (x, y, ...)`.
fn comparison(e: &protobuf::AExpr, scope: &Scope) -> Option<Predicate> {
    let left = e.lexpr.as_deref().and_then(|n| n.node.as_ref());
    let right = e.rexpr.as_deref().and_then(|n| n.node.as_ref());
    let kind = AExprKind::try_from(e.kind).ok()?;
    let is_eq = matches!(e.name.as_slice(), [op] if matches!(&op.node, Some(N::String(s)) if s.sval == "="));
    let (column, operands) = match kind {
        AExprKind::AexprOp if is_eq => match (column_ref(left), column_ref(right)) {
            (Some(c), None) => (c, vec![operand(right)]),
            (None, Some(c)) => (c, vec![operand(left)]),
            _ => return None,
        },
        AExprKind::AexprIn if is_eq => {
            let Some(N::List(list)) = right else { return None };
            (column_ref(left)?, list.items.iter().map(|i| operand(i.node.as_ref())).collect())
        }
        _ => return None,
    };
    let (qualifier, column) = column;
    Some(Predicate { table: scope.resolve(qualifier.as_deref()), column, operands })
}

/// The names of a column reference (`s.t.c` → `["s", "t", "c"]`; a `*` left out).
pub fn column_names(c: &protobuf::ColumnRef) -> Vec<&str> {
    c.fields
        .iter()
        .filter_map(|f| match &f.node {
            Some(N::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect()
}

/// `(qualifier, column)` of a column reference.
fn column_ref(node: Option<&N>) -> Option<(Option<String>, String)> {
    let Some(N::ColumnRef(c)) = node else { return None };
    let names = column_names(c);
    match names.as_slice() {
        [column] => Some((None, column.to_string())),
        [.., table, column] => Some((Some(table.to_string()), column.to_string())),
        [] => None,
    }
}

pub(super) fn operand(node: Option<&N>) -> Operand {
    match node {
        Some(N::AConst(c)) if c.isnull => Operand::Const(Value::Null),
        Some(N::AConst(c)) => match &c.val {
            Some(a_const::Val::Ival(i)) => Operand::Const(Value::Int(i.ival as i64)),
            Some(a_const::Val::Sval(s)) => Operand::Const(Value::Text(s.sval.clone())),
            // Integers beyond int4 arrive as "float" text.
            Some(a_const::Val::Fval(f)) => Operand::Const(Value::Text(f.fval.clone())),
            Some(a_const::Val::Boolval(b)) => Operand::Const(Value::Text(b.boolval.to_string())),
            Some(a_const::Val::Bsval(s)) => Operand::Const(Value::Text(s.bsval.clone())),
            None => Operand::Opaque,
        },
        Some(N::ParamRef(p)) if p.number >= 1 => Operand::Param(p.number as usize - 1),
        // '42'::bigint, $1::text: the value inside the cast.
        Some(N::TypeCast(t)) => operand(t.arg.as_deref().and_then(|n| n.node.as_ref())),
        _ => Operand::Opaque,
    }
}

fn insert(i: &protobuf::InsertStmt) -> Option<Insert> {
    let table = i.relation.as_ref()?.relname.clone();
    let columns = i
        .cols
        .iter()
        .filter_map(|c| match &c.node {
            Some(N::ResTarget(r)) => Some(r.name.clone()),
            _ => None,
        })
        .collect();
    let mut insert = Insert { table, columns, ..Insert::default() };
    match i.select_stmt.as_deref().and_then(|n| n.node.as_ref()) {
        Some(N::SelectStmt(s)) if !s.values_lists.is_empty() => insert.rows = values_rows(&s.values_lists),
        Some(N::SelectStmt(s)) => match from_values(s) {
            Some((rows, sorted_by)) => (insert.rows, insert.sorted_by) = (rows, sorted_by),
            None => insert.from_unnest = unnest(s),
        },
        _ => {}
    }
    let returns = i.returning_clause.as_ref().is_some_and(|r| !r.exprs.is_empty());
    insert.in_order = returns && i.on_conflict_clause.is_none();
    Some(insert)
}

fn values_rows(lists: &[protobuf::Node]) -> Vec<Vec<Operand>> {
    lists
        .iter()
        .filter_map(|row| match &row.node {
            Some(N::List(l)) => Some(l.items.iter().map(|v| operand(v.node.as_ref())).collect()),
            _ => None,
        })
        .collect()
}

/// A SELECT that only renames the rows of its one FROM item: nothing that
/// would give other rows once they are split by shard (WHERE, GROUP BY,
/// LIMIT, DISTINCT, set operations; ORDER BY when `sorted` is false).
fn only_renames(s: &protobuf::SelectStmt, sorted: bool) -> bool {
    s.values_lists.is_empty()
        && s.where_clause.is_none()
        && s.group_clause.is_empty()
        && s.having_clause.is_none()
        && (sorted || s.sort_clause.is_empty())
        && s.limit_count.is_none()
        && s.limit_offset.is_none()
        && s.distinct_clause.is_empty()
        && s.with_clause.is_none()
        && s.larg.is_none()
        && s.from_clause.len() == 1
}

/// The alias's column names: `AS x(a, b)`.
fn alias_names(alias: Option<&protobuf::Alias>) -> Vec<&str> {
    alias
        .iter()
        .flat_map(|a| a.colnames.iter())
        .filter_map(|n| match &n.node {
            Some(N::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect()
}

/// The column of the FROM item (of `width` columns named `names`) each
/// target takes as it is (a cast aside), `None` for an expression; `None`
/// overall when a target cannot be read.
fn target_columns(s: &protobuf::SelectStmt, names: &[&str], width: usize) -> Option<Vec<Option<usize>>> {
    let mut columns = Vec::new();
    for target in &s.target_list {
        let Some(N::ResTarget(r)) = target.node.as_ref() else { return None };
        let mut val = r.val.as_deref().and_then(|v| v.node.as_ref());
        if let Some(N::TypeCast(c)) = val {
            val = c.arg.as_deref().and_then(|v| v.node.as_ref());
        }
        let Some(N::ColumnRef(c)) = val else {
            columns.push(None);
            continue;
        };
        match c.fields.last().and_then(|f| f.node.as_ref()) {
            Some(N::AStar(_)) if s.target_list.len() == 1 => columns.extend((0..width).map(Some)),
            Some(N::String(name)) => columns.push(names.iter().position(|n| *n == name.sval)),
            _ => return None,
        }
    }
    Some(columns)
}

/// The rows of `INSERT ... SELECT <columns> FROM (VALUES ...) AS v(...)`,
/// per inserted column (SQLAlchemy's bulk insert with RETURNING sends
/// this, sorted by a counter column so that rows come back in order: an
/// ORDER BY on one of its columns, ascending, is kept as `sorted_by`).
fn from_values(s: &protobuf::SelectStmt) -> Option<(Vec<Vec<Operand>>, Vec<Operand>)> {
    if !only_renames(s, true) {
        return None;
    }
    let Some(N::RangeSubselect(sub)) = s.from_clause[0].node.as_ref() else { return None };
    let Some(N::SelectStmt(values)) = sub.subquery.as_deref().and_then(|q| q.node.as_ref()) else { return None };
    if sub.lateral || values.values_lists.is_empty() {
        return None;
    }
    let rows = values_rows(&values.values_lists);
    let names = alias_names(sub.alias.as_ref());
    let width = rows.first().map_or(0, Vec::len);
    let columns = target_columns(s, &names, width)?;
    let mut sorted_by = Vec::new();
    if let [sort] = s.sort_clause.as_slice() {
        let Some(N::SortBy(by)) = sort.node.as_ref() else { return None };
        let ascending = by.sortby_dir == protobuf::SortByDir::SortbyDefault as i32
            || by.sortby_dir == protobuf::SortByDir::SortbyAsc as i32;
        let column = match by.node.as_deref().and_then(|n| n.node.as_ref()) {
            Some(N::ColumnRef(c)) => match c.fields.last().and_then(|f| f.node.as_ref()) {
                Some(N::String(name)) => names.iter().position(|n| *n == name.sval),
                _ => None,
            },
            _ => None,
        }?;
        if !ascending {
            return None;
        }
        sorted_by = rows.iter().map(|r| r.get(column).cloned().unwrap_or(Operand::Opaque)).collect();
    } else if !s.sort_clause.is_empty() {
        return None;
    }
    let pick = |row: &Vec<Operand>| {
        columns.iter().map(|c| c.and_then(|c| row.get(c).cloned()).unwrap_or(Operand::Opaque)).collect()
    };
    Some((rows.iter().map(pick).collect(), sorted_by))
}

/// `INSERT ... SELECT <columns or *> FROM unnest($a[::type], ...) [AS x(...)]`.
fn unnest(s: &protobuf::SelectStmt) -> Option<Unnest> {
    if !only_renames(s, false) {
        return None;
    }
    let Some(N::RangeFunction(f)) = s.from_clause[0].node.as_ref() else { return None };
    if f.ordinality || f.functions.len() != 1 {
        return None;
    }
    let Some(N::List(pair)) = f.functions[0].node.as_ref() else { return None };
    let Some(N::FuncCall(call)) = pair.items.first().and_then(|n| n.node.as_ref()) else { return None };
    let name = call.funcname.last().and_then(|n| match &n.node {
        Some(N::String(s)) => Some(s.sval.as_str()),
        _ => None,
    });
    if name != Some("unnest") || call.agg_star || call.func_variadic {
        return None;
    }
    let arrays = call
        .args
        .iter()
        .map(|a| {
            let mut node = a.node.as_ref()?;
            if let N::TypeCast(c) = node {
                node = c.arg.as_deref()?.node.as_ref()?;
            }
            match node {
                N::ParamRef(p) if p.number > 0 => Some(p.number as usize - 1),
                _ => None,
            }
        })
        .collect::<Option<Vec<usize>>>()?;
    let columns = target_columns(s, &alias_names(f.alias.as_ref()), arrays.len())?;
    Some(Unnest { arrays, columns })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape_of(sql: &str) -> Shape {
        let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).unwrap();
        shape(parsed.protobuf.stmts[0].stmt.as_ref().unwrap().node.as_ref().unwrap())
    }

    fn values(s: &Shape, table: &str, column: &str) -> Vec<Operand> {
        s.operands_for(table, column, None).cloned().collect()
    }

    #[test]
    fn inserts_from_unnest_of_bound_arrays() {
        let from = |sql: &str| shape_of(sql).insert.and_then(|i| i.from_unnest);
        let all = from("INSERT INTO t (k, v) SELECT * FROM unnest($1::bigint[], $2::text[]) RETURNING id").unwrap();
        assert_eq!(all, Unnest { arrays: vec![0, 1], columns: vec![Some(0), Some(1)] });
        let named =
            from("INSERT INTO t (v, k, at) SELECT b, a, now() FROM pg_catalog.unnest($3, $1) AS u(a, b)").unwrap();
        assert_eq!(named, Unnest { arrays: vec![2, 0], columns: vec![Some(1), Some(0), None] });
        let in_order = |sql: &str| shape_of(sql).insert.unwrap().in_order;
        assert!(in_order("INSERT INTO t (k) SELECT * FROM unnest($1::int[]) RETURNING k"));
        assert!(!in_order("INSERT INTO t (k) SELECT * FROM unnest($1::int[]) ON CONFLICT DO NOTHING RETURNING k"));
        assert!(!in_order("INSERT INTO t (k) SELECT * FROM unnest($1::int[])"));
        for other in [
            "INSERT INTO t (k) SELECT * FROM unnest($1::int[]) AS u(k) WHERE k > 0",
            "INSERT INTO t (k) SELECT * FROM unnest($1::int[]) ORDER BY 1",
            "INSERT INTO t (k) SELECT * FROM unnest(ARRAY[1, 2])",
            "INSERT INTO t (k) SELECT * FROM unnest($1::int[]) WITH ORDINALITY",
            "INSERT INTO t (k) SELECT k FROM other",
            "INSERT INTO t (k) SELECT * FROM generate_series(1, $1)",
        ] {
            assert_eq!(from(other), None, "{other}");
        }
    }

    #[test]
    fn inserts_from_a_values_list() {
        let sql = "INSERT INTO t (v, k) SELECT p0::text, p1 FROM (VALUES ($1, $2, 0), ('b', 7, 1)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING k";
        let insert = shape_of(sql).insert.unwrap();
        assert_eq!(
            insert.rows,
            [
                vec![Operand::Param(0), Operand::Param(1)],
                vec![Operand::Const(Value::Text("b".into())), Operand::Const(Value::Int(7))]
            ]
        );
        assert_eq!(insert.sorted_by, [Operand::Const(Value::Int(0)), Operand::Const(Value::Int(1))]);
        assert!(insert.in_order);
        assert_eq!(values(&shape_of(sql), "t", "k"), [Operand::Param(1), Operand::Const(Value::Int(7))]);
        for other in [
            "INSERT INTO t (k) SELECT a FROM (VALUES (1), (2)) AS v(a) ORDER BY a DESC",
            "INSERT INTO t (k) SELECT a FROM (VALUES (1), (2)) AS v(a) WHERE a > 1",
            "INSERT INTO t (k) SELECT a FROM (VALUES (1), (2)) AS v(a) LIMIT 1",
            "INSERT INTO t (k) SELECT a FROM (SELECT 1) AS v(a)",
        ] {
            assert!(shape_of(other).insert.unwrap().rows.is_empty(), "{other}");
        }
    }

    #[test]
    fn where_conjunctions_in_lists_and_params() {
        let s = shape_of(
            "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.customer_id = 42 AND c.region IN ('eu', $1) AND o.total > 5",
        );
        assert_eq!(s.tables, ["orders", "customers"]);
        assert_eq!(values(&s, "orders", "customer_id"), [Operand::Const(Value::Int(42))]);
        assert_eq!(values(&s, "customers", "region"), [Operand::Const(Value::Text("eu".into())), Operand::Param(0)]);
        // An OR is not a conjunction: nothing can be concluded from it.
        let s = shape_of("SELECT * FROM orders WHERE customer_id = 1 OR customer_id = 2");
        assert!(s.predicates.is_empty());
        let s = shape_of("SELECT * FROM orders WHERE 7 = customer_id AND customer_id = '8'::bigint");
        assert_eq!(
            values(&s, "orders", "customer_id"),
            [Operand::Const(Value::Int(7)), Operand::Const(Value::Text("8".into()))]
        );
    }

    #[test]
    fn insert_rows_and_update_targets() {
        let s = shape_of("INSERT INTO orders (id, customer_id, total) VALUES (1, 10, 5), (2, $1, now())");
        assert_eq!(s.verb, Verb::Insert);
        assert_eq!(values(&s, "orders", "customer_id"), [Operand::Const(Value::Int(10)), Operand::Param(0)]);
        assert_eq!(s.insert.as_ref().unwrap().rows[1][2], Operand::Opaque);
        let s = shape_of("INSERT INTO orders VALUES (1, 10), (2, 20)");
        assert!(s.inserts_without_columns("orders"));
        let by_position: Vec<_> = s.operands_for("orders", "customer_id", Some(1)).cloned().collect();
        assert_eq!(by_position, [Operand::Const(Value::Int(10)), Operand::Const(Value::Int(20))]);
        let s = shape_of("UPDATE orders SET customer_id = 3, total = 1 WHERE id = $2");
        assert_eq!(s.updated, ["customer_id", "total"]);
        assert_eq!(values(&s, "orders", "id"), [Operand::Param(1)]);
        let s = shape_of("DELETE FROM orders WHERE customer_id = 9");
        assert_eq!(values(&s, "orders", "customer_id"), [Operand::Const(Value::Int(9))]);
    }

    #[test]
    fn big_integers_and_nulls() {
        let s = shape_of("SELECT 1 FROM t WHERE k = 9000000000 AND j IS NULL AND m = NULL");
        assert_eq!(values(&s, "t", "k"), [Operand::Const(Value::Text("9000000000".into()))]);
        assert_eq!(values(&s, "t", "m"), [Operand::Const(Value::Null)]);
    }
}
