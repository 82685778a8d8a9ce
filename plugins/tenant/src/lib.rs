//! placeholder
use shardcar_sdk::{Decision, Facts, Policy, Shards, Value};
struct P;
impl Policy for P {
    fn init(_: &str) -> Result<Self, String> {
        Ok(P)
    }
    fn route(&self, _: &Facts, _: &[Value], _: &Shards) -> Result<Decision, String> {
        Ok(Decision::all())
    }
}
shardcar_sdk::export_policy!(P);
