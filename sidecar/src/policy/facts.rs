//! The facts of one statement as a plugin sees them: the classifier's facts
//! with this execution's parameters bound, and the session around it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::classify::params::Params;
use crate::classify::{Facts, Operand, Statement, Value};
use crate::config::KeyType;
use crate::topology::PolicyId;

/// Who is asking, for plugins that route by user or session variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionInfo {
    pub user: String,
    pub database: String,
    pub application_name: String,
    /// `SET shardcar.<name> = value`, by name.
    pub vars: BTreeMap<String, String>,
}

/// A sharded table: its key column, key type and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRule {
    pub table: String,
    pub key: String,
    pub key_type: KeyType,
    pub policy: PolicyId,
    /// Tables of one colocation group keep equal keys on one shard: the
    /// same plugin with the same config, and keys of the same type.
    pub colocation: usize,
}

/// One statement routed by one table's policy.
#[derive(Debug, Clone)]
pub struct FactsView {
    pub facts: Arc<Facts>,
    pub index: usize,
    pub params: Option<Arc<Params>>,
    pub rule: Arc<TableRule>,
    pub session: Arc<SessionInfo>,
    pub in_transaction: bool,
    /// The key column's values, canonical; empty when the statement has no
    /// usable key (no condition on it, or one compared with an expression
    /// only the server can evaluate).
    pub key_values: Vec<Value>,
}

impl FactsView {
    /// Binds the statement's key values; an error when one cannot be read
    /// (a binary parameter of an unknown type, a non-integer for an int key).
    /// `key_position` places the key column for INSERTs without a column list.
    pub fn new(
        facts: Arc<Facts>,
        index: usize,
        params: Option<Arc<Params>>,
        rule: Arc<TableRule>,
        session: Arc<SessionInfo>,
        in_transaction: bool,
        key_position: Option<usize>,
    ) -> Result<FactsView, String> {
        let mut view = FactsView { facts, index, params, rule, session, in_transaction, key_values: Vec::new() };
        let operands = || view.statement().shape.operands_for(&view.rule.table, &view.rule.key, key_position);
        if !operands().any(|op| *op == Operand::Opaque) {
            let mut values = Vec::new();
            for op in operands() {
                let value = view.bind(op)?.unwrap_or(Value::Null);
                values.push(canonical(value, view.rule.key_type).map_err(|e| format!("key {}: {e}", view.rule.key))?);
            }
            view.key_values = values;
        }
        Ok(view)
    }

    pub fn statement(&self) -> &Statement {
        &self.facts.statements[self.index]
    }

    /// An operand's value; `None` for an expression.
    fn bind(&self, op: &Operand) -> Result<Option<Value>, String> {
        match op {
            Operand::Const(v) => Ok(Some(v.clone())),
            Operand::Param(i) => match &self.params {
                Some(p) => p.value(*i).map(Some),
                None => Err(format!("parameter ${} has no value", i + 1)),
            },
            Operand::Opaque => Ok(None),
        }
    }

    fn bind_auto(&self, op: &Operand) -> Option<Value> {
        self.bind(op).ok().flatten().and_then(|v| canonical(v, KeyType::Auto).ok())
    }

    /// WHERE conditions with their values bound; those involving expressions are left out.
    pub fn predicates(&self) -> Vec<(String, String, Vec<Value>)> {
        self.statement()
            .shape
            .predicates
            .iter()
            .filter_map(|p| {
                let values = p.operands.iter().map(|o| self.bind_auto(o)).collect::<Option<Vec<_>>>()?;
                Some((p.table.clone().unwrap_or_default(), p.column.clone(), values))
            })
            .collect()
    }

    /// INSERT rows as (column, value) pairs, leaving out computed values.
    pub fn rows(&self) -> Vec<Vec<(String, Value)>> {
        let Some(insert) = &self.statement().shape.insert else { return Vec::new() };
        insert
            .rows
            .iter()
            .map(|row| {
                insert.columns.iter().zip(row).filter_map(|(c, o)| self.bind_auto(o).map(|v| (c.clone(), v))).collect()
            })
            .collect()
    }
}

/// The canonical form of a key value for its declared type.
pub fn canonical(value: Value, key_type: KeyType) -> Result<Value, String> {
    Ok(match (key_type, value) {
        (_, Value::Null) => Value::Null,
        (KeyType::Auto, Value::Text(t)) => match t.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => match uuid::Uuid::try_parse(&t) {
                Ok(u) => Value::Text(u.hyphenated().to_string()),
                Err(_) => Value::Text(t),
            },
        },
        (KeyType::Int, Value::Text(t)) => Value::Int(t.trim().parse().map_err(|_| format!("'{t}' is not an integer"))?),
        (KeyType::Text, Value::Int(i)) => Value::Text(i.to_string()),
        (KeyType::Uuid, Value::Text(t)) => {
            Value::Text(uuid::Uuid::try_parse(&t).map_err(|_| format!("'{t}' is not a UUID"))?.hyphenated().to_string())
        }
        (KeyType::Uuid, Value::Int(i)) => return Err(format!("{i} is not a UUID")),
        (_, v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    fn view(sql: &str, params: Option<Params>, key_type: KeyType) -> Result<FactsView, String> {
        let rule = TableRule {
            table: "orders".into(),
            key: "customer_id".into(),
            key_type,
            policy: crate::topology::PolicyId::at(0),
            colocation: 0,
        };
        FactsView::new(
            Arc::new(classify(sql)),
            0,
            params.map(Arc::new),
            Arc::new(rule),
            Arc::new(SessionInfo::default()),
            false,
            None,
        )
    }

    #[test]
    fn one_key_however_it_is_spelled() {
        let text = Params { values: vec![Some("42".into())], ..Params::default() };
        for (sql, params) in [
            ("SELECT * FROM orders WHERE customer_id = 42", None),
            ("SELECT * FROM orders WHERE customer_id = '42'", None),
            ("SELECT * FROM orders WHERE customer_id = $1", Some(text)),
        ] {
            assert_eq!(view(sql, params, KeyType::Auto).unwrap().key_values, [Value::Int(42)], "{sql}");
        }
    }

    #[test]
    fn expressions_leave_the_key_unknown_and_bad_values_are_errors() {
        let v = view("SELECT * FROM orders WHERE customer_id IN (1, abs(-2))", None, KeyType::Auto).unwrap();
        assert!(v.key_values.is_empty(), "a partial key list would miss rows");
        assert!(view("SELECT * FROM orders WHERE customer_id = 'x'", None, KeyType::Int).is_err());
        assert!(view("SELECT * FROM orders WHERE customer_id = $1", None, KeyType::Auto).is_err());
        let v = view("SELECT * FROM orders WHERE customer_id = 7", None, KeyType::Text).unwrap();
        assert_eq!(v.key_values, [Value::Text("7".into())]);
    }

    #[test]
    fn rows_and_predicates_for_plugins() {
        let v =
            view("INSERT INTO orders (id, customer_id, note) VALUES (1, 2, 'x'), (3, 4, now())", None, KeyType::Auto)
                .unwrap();
        assert_eq!(v.key_values, [Value::Int(2), Value::Int(4)]);
        assert_eq!(v.rows()[1], [("id".to_string(), Value::Int(3)), ("customer_id".into(), Value::Int(4))]);
        let v = view("SELECT * FROM orders WHERE region = 'eu' AND customer_id = 1", None, KeyType::Auto).unwrap();
        assert_eq!(v.predicates()[0], ("orders".into(), "region".into(), vec![Value::Text("eu".into())]));
    }

    /// A simple query routed by its template (literals lifted out as
    /// parameters) gives plugins exactly what the text as written gives.
    #[test]
    fn templates_give_plugins_what_the_text_gives() {
        let cache = crate::classify::FactsCache::new(1 << 20, &crate::metrics::Metrics::new());
        let rule = Arc::new(TableRule {
            table: "orders".into(),
            key: "customer_id".into(),
            key_type: KeyType::Auto,
            policy: crate::topology::PolicyId::at(0),
            colocation: 0,
        });
        let seen = |facts: Arc<Facts>, params: Option<Arc<Params>>| {
            let v = FactsView::new(facts, 0, params, rule.clone(), Arc::new(SessionInfo::default()), false, None);
            v.map(|v| {
                (v.key_values.clone(), v.predicates(), v.rows(), v.facts.hints.clone(), v.statement().kind.clone())
            })
        };
        let mut lifted = 0;
        for sql in [
            "SELECT * FROM orders WHERE customer_id = 42",
            "SELECT * FROM orders WHERE customer_id = -42 AND region = 'e''u'",
            "SELECT * FROM orders WHERE 42 = customer_id",
            "SELECT * FROM orders WHERE region = 'x' AND -5 = customer_id",
            "SELECT * FROM orders WHERE customer_id IN (1, -2, +3, '4', 99999999999)",
            "SELECT * FROM orders WHERE customer_id = '7'::bigint LIMIT 10 OFFSET 2",
            "SELECT * FROM orders WHERE customer_id = 1.0",
            "SELECT * FROM orders WHERE customer_id = 3 - 1",
            "SELECT * FROM orders WHERE customer_id = abs(-2)",
            "SELECT * FROM orders WHERE customer_id = 2 ORDER BY 1",
            "UPDATE orders SET total = total + 5 WHERE customer_id = 8",
            "UPDATE orders SET total = total - -5 WHERE customer_id = 8",
            "DELETE FROM orders WHERE customer_id = 9 AND note = 'a -- b /* c'",
            "INSERT INTO orders (id, customer_id, note) VALUES (1, 2, 'x'), (3, -4, now())",
            "INSERT INTO orders VALUES (1, 2)",
            "/* shardcar: shard=s1 */ SELECT * FROM orders WHERE customer_id = 5",
            "SELECT * FROM orders WHERE customer_id = 5 /*traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/",
            "SELECT * FROM orders WHERE created > DATE '2024-01-01' AND customer_id = 1",
            "SELECT * FROM orders WHERE note = E'it\\'s' AND customer_id = 1",
            "SELECT nextval('orders_id_seq')",
            // Found by fuzzing: typed literals glued to their type name.
            "SELECT * FROM orders WHERE customer_id = -84 AND regie '' =no'u'",
            "/* shardcar: shard=E 0c user_id*/ SELECT WHERE customer_id = 07",
            "INSERT INTO orders (id, customer_id, note) VALUES (1, 2, z'xr'), (4, -0, now())",
            "INSERT INTO orders (id, customer_id, note) VALUES (1, 2, z'xr'), (4, nwo,- (4))",
            "INSERT INTO orders (id, cusLUtomer_te) VALUES (4, 2, 'x'), (3,-  -4, now())",
            "SELECT **ROM orders WHERE c= -x4 AND r=\u{6df}'''u'",
        ] {
            let written = seen(cache.get(sql), None);
            if let Some((facts, params)) = cache.lookup_lifted(sql) {
                lifted += 1;
                assert_eq!(seen(facts, Some(params)), written, "{sql}");
            }
        }
        assert!(lifted >= 15, "only {lifted} lifted");
    }
}
