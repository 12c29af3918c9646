//! Policy names and their tunable weights. The selection logic lives in `router.rs`, next to the
//! state it reads; this module only validates configuration.
use crate::error::{CoreError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    RoundRobin,
    Random,
    LeastInflight,
    PowerOfTwo,
    LeastLoad,
    PrefixHash,
    Session,
    Cost,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 8] = [
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::LeastInflight,
        PolicyKind::PowerOfTwo,
        PolicyKind::LeastLoad,
        PolicyKind::PrefixHash,
        PolicyKind::Session,
        PolicyKind::Cost,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round_robin",
            PolicyKind::Random => "random",
            PolicyKind::LeastInflight => "least_inflight",
            PolicyKind::PowerOfTwo => "power_of_two",
            PolicyKind::LeastLoad => "least_load",
            PolicyKind::PrefixHash => "prefix_hash",
            PolicyKind::Session => "session",
            PolicyKind::Cost => "cost",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        PolicyKind::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            let names: Vec<&str> = PolicyKind::ALL.iter().map(|k| k.name()).collect();
            CoreError::config(format!("unknown policy {name:?}; expected one of {}", names.join(", ")))
        })
    }

    /// The weights this policy reads, with their defaults and valid ranges.
    pub fn weight_specs(self) -> &'static [WeightSpec] {
        match self {
            PolicyKind::Cost => COST_WEIGHTS,
            PolicyKind::PrefixHash => PREFIX_HASH_WEIGHTS,
            PolicyKind::Session => SESSION_WEIGHTS,
            _ => &[],
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct WeightSpec {
    pub name: &'static str,
    pub default: f64,
    pub min: f64,
    pub max: f64,
}

const fn w(name: &'static str, default: f64, min: f64, max: f64) -> WeightSpec {
    WeightSpec { name, default, min, max }
}

/// See docs/routing.md for what each one means.
pub const COST_WEIGHTS: &[WeightSpec] = &[
    w("queue_weight", 1.0, 0.0, 100.0),
    w("prefill_weight", 1.0, 0.0, 100.0),
    w("decode_weight", 0.002, 0.0, 10.0),
    w("kv_weight", 0.5, 0.0, 100.0),
    w("kv_knee", 0.8, 0.0, 0.999),
    w("tie_tolerance", 0.05, 0.0, 10.0),
    w("externality_weight", 1.0, 0.0, 100.0),
    w("recompute_weight", 3.0, 0.0, 100.0),
    w("content_weight", 100.0, 0.0, 1000.0),
    w("ewma_alpha", 0.2, 0.001, 1.0),
];
pub const PREFIX_HASH_WEIGHTS: &[WeightSpec] = &[w("queue_threshold", 8.0, 0.0, 1e9)];
pub const SESSION_WEIGHTS: &[WeightSpec] = &[w("load_factor", 1.25, 1.0, 100.0)];

/// Every weight any policy reads; unused ones keep their defaults, so policies read fields directly.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub queue_weight: f64,
    pub prefill_weight: f64,
    pub decode_weight: f64,
    pub kv_weight: f64,
    pub kv_knee: f64,
    pub tie_tolerance: f64,
    pub externality_weight: f64,
    pub recompute_weight: f64,
    pub content_weight: f64,
    pub ewma_alpha: f64,
    pub queue_threshold: f64,
    pub load_factor: f64,
}

impl Default for Weights {
    fn default() -> Self {
        let mut w = Weights {
            queue_weight: 0.0,
            prefill_weight: 0.0,
            decode_weight: 0.0,
            kv_weight: 0.0,
            kv_knee: 0.0,
            tie_tolerance: 0.0,
            externality_weight: 0.0,
            recompute_weight: 0.0,
            content_weight: 0.0,
            ewma_alpha: 0.0,
            queue_threshold: 0.0,
            load_factor: 0.0,
        };
        for spec in COST_WEIGHTS.iter().chain(PREFIX_HASH_WEIGHTS).chain(SESSION_WEIGHTS) {
            *w.field(spec.name).expect("spec names are fields") = spec.default;
        }
        w
    }
}

impl Weights {
    fn field(&mut self, name: &str) -> Option<&mut f64> {
        Some(match name {
            "queue_weight" => &mut self.queue_weight,
            "prefill_weight" => &mut self.prefill_weight,
            "decode_weight" => &mut self.decode_weight,
            "kv_weight" => &mut self.kv_weight,
            "kv_knee" => &mut self.kv_knee,
            "tie_tolerance" => &mut self.tie_tolerance,
            "externality_weight" => &mut self.externality_weight,
            "recompute_weight" => &mut self.recompute_weight,
            "content_weight" => &mut self.content_weight,
            "ewma_alpha" => &mut self.ewma_alpha,
            "queue_threshold" => &mut self.queue_threshold,
            "load_factor" => &mut self.load_factor,
            _ => return None,
        })
    }

    fn get(&self, name: &str) -> f64 {
        self.clone().field(name).map(|f| *f).unwrap_or(f64::NAN)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    pub kind: PolicyKind,
    pub weights: Weights,
}

impl PolicyConfig {
    /// A policy with default weights overridden by `overrides`; a weight the policy does not read,
    /// or a value out of range, is an error (a typo must not silently leave a default in place).
    pub fn new(name: &str, overrides: &[(String, f64)]) -> Result<Self> {
        let kind = PolicyKind::parse(name)?;
        let mut weights = Weights::default();
        for (k, v) in overrides {
            let spec = kind.weight_specs().iter().find(|s| s.name == k).ok_or_else(|| {
                let names: Vec<&str> = kind.weight_specs().iter().map(|s| s.name).collect();
                CoreError::config(format!(
                    "policy {name:?} has no weight {k:?} (its weights: {})",
                    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
                ))
            })?;
            if !(v.is_finite() && *v >= spec.min && *v <= spec.max) {
                return Err(CoreError::config(format!("weight {k:?} = {v} is outside {}..={}", spec.min, spec.max)));
            }
            *weights.field(k).expect("spec names are fields") = *v;
        }
        Ok(PolicyConfig { kind, weights })
    }

    /// The policy's own weights, for `Router.policy()` and the admin API.
    pub fn weights_list(&self) -> Vec<(&'static str, f64)> {
        self.kind.weight_specs().iter().map(|s| (s.name, self.weights.get(s.name))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in PolicyKind::ALL {
            assert_eq!(PolicyKind::parse(k.name()).unwrap(), k);
        }
        assert!(PolicyKind::parse("fastest").is_err());
    }

    #[test]
    fn weights_are_validated() {
        let p = PolicyConfig::new("cost", &[("kv_weight".into(), 2.0)]).unwrap();
        assert_eq!(p.weights.kv_weight, 2.0);
        assert_eq!(p.weights.queue_weight, 1.0);
        assert!(PolicyConfig::new("cost", &[("kv_wieght".into(), 2.0)]).is_err());
        assert!(PolicyConfig::new("cost", &[("kv_knee".into(), 1.5)]).is_err());
        assert!(PolicyConfig::new("round_robin", &[("kv_weight".into(), 1.0)]).is_err());
        assert!(PolicyConfig::new("cost", &[("queue_weight".into(), f64::NAN)]).is_err());
        let listed = PolicyConfig::new("prefix_hash", &[]).unwrap().weights_list();
        assert_eq!(listed, vec![("queue_threshold", 8.0)]);
    }
}
