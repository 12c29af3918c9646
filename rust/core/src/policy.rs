//! Policies: which scorers a policy reads, which picker turns their values into a choice, and the
//! parameters of each, validated here. The scorers live in `scorer.rs`, the pickers in
//! `router/pick.rs`.
use std::ops::{Index, IndexMut};

use crate::error::{CoreError, Result};
use crate::outcome::named_enum;
use crate::scorer::Scorer;

named_enum! {
    PolicyKind {
        RoundRobin => "round_robin",
        Random => "random",
        LeastInflight => "least_inflight",
        PowerOfTwo => "power_of_two",
        LeastLoad => "least_load",
        PrefixHash => "prefix_hash",
        Session => "session",
        Pinned => "pinned",
        Cost => "cost",
        Weighted => "weighted",
    }
}

impl PolicyKind {
    pub fn parse(name: &str) -> Result<Self> {
        PolicyKind::ALL.iter().copied().find(|k| k.as_str() == name).ok_or_else(|| {
            let names: Vec<&str> = PolicyKind::ALL.iter().map(|k| k.as_str()).collect();
            CoreError::config(format!("unknown policy {name:?}; expected one of {}", names.join(", ")))
        })
    }

    /// The parameters this policy reads, in the order `Router.policy()` lists them.
    pub fn params(self) -> &'static [Param] {
        use Param::*;
        match self {
            PolicyKind::Cost => &[
                QueueWeight,
                PrefillWeight,
                DecodeWeight,
                KvWeight,
                KvKnee,
                TieTolerance,
                ContentWeight,
                EwmaAlpha,
                LoadAlpha,
            ],
            PolicyKind::PrefixHash => &[QueueThreshold],
            PolicyKind::Session => &[LoadFactor],
            PolicyKind::Weighted => &[PrefixScore, LeastLoadScore, LeastInflightScore, CostScore],
            _ => &[],
        }
    }

    /// The scorers whose values this policy's picker reads (the predicted TTFT, which admission
    /// reads under every policy, comes on top).
    pub fn scorers(self) -> &'static [Scorer] {
        match self {
            PolicyKind::RoundRobin | PolicyKind::Random => &[],
            PolicyKind::LeastInflight | PolicyKind::PowerOfTwo | PolicyKind::Session | PolicyKind::Pinned => {
                &[Scorer::LeastInflight]
            }
            PolicyKind::LeastLoad | PolicyKind::PrefixHash => &[Scorer::LeastLoad],
            PolicyKind::Cost => &[Scorer::Cost],
            PolicyKind::Weighted => &Scorer::WEIGHTED,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub default: f64,
    pub min: f64,
    pub max: f64,
}

/// One table row per parameter: its name, default and range are written only here.
macro_rules! params {
    ($($(#[$doc:meta])* $var:ident = $name:literal, $default:expr, $min:expr, $max:expr;)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Param {
            $($(#[$doc])* $var,)*
        }

        impl Param {
            pub const ALL: &'static [Param] = &[$(Param::$var),*];

            pub fn spec(self) -> ParamSpec {
                match self {
                    $(Param::$var => ParamSpec { name: $name, default: $default, min: $min, max: $max },)*
                }
            }
        }
    };
}

// See docs/routing.md for what each one means.
params! {
    // The `ttft` scorer: predicted seconds to the first token (admission reads it under every policy).
    QueueWeight = "queue_weight", 1.0, 0.0, 100.0;
    PrefillWeight = "prefill_weight", 1.0, 0.0, 100.0;
    DecodeWeight = "decode_weight", 0.002, 0.0, 10.0;
    KvWeight = "kv_weight", 0.5, 0.0, 100.0;
    KvKnee = "kv_knee", 0.8, 0.0, 0.999;
    // The `cost` scorer: the ttft plus what this placement costs other requests, in seconds.
    ContentWeight = "content_weight", 100.0, 0.0, 1000.0;
    // The cost picker: relative width of a near-tie.
    TieTolerance = "tie_tolerance", 0.05, 0.0, 10.0;
    // Learning the backends' rates from outcomes.
    EwmaAlpha = "ewma_alpha", 0.2, 0.001, 1.0;
    // Smoothing of each backend's mean number of requests waiting for a first token, sampled at
    // every decision: a window of about 1/alpha arrivals.
    LoadAlpha = "load_alpha", 0.02, 0.001, 1.0;
    // prefix_hash: queue depth at which affinity gives way to least load.
    QueueThreshold = "queue_threshold", 8.0, 0.0, 1e9;
    // session: bounded load, a backend's share of in-flight work above which a session spills.
    LoadFactor = "load_factor", 1.25, 1.0, 100.0;
    // weighted: the weight of each scorer in the sum of normalised scores.
    PrefixScore = "prefix", 1.0, 0.0, 100.0;
    LeastLoadScore = "least_load", 1.5, 0.0, 100.0;
    LeastInflightScore = "least_inflight", 0.0, 0.0, 100.0;
    CostScore = "cost", 0.0, 0.0, 100.0;
}

/// A value for every parameter; those the policy does not read keep their defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Params([f64; Param::ALL.len()]);

impl Default for Params {
    fn default() -> Self {
        let mut values = [0.0; Param::ALL.len()];
        for &p in Param::ALL {
            values[p as usize] = p.spec().default;
        }
        Params(values)
    }
}

impl Index<Param> for Params {
    type Output = f64;
    fn index(&self, p: Param) -> &f64 {
        &self.0[p as usize]
    }
}

impl IndexMut<Param> for Params {
    fn index_mut(&mut self, p: Param) -> &mut f64 {
        &mut self.0[p as usize]
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    pub kind: PolicyKind,
    pub params: Params,
}

impl PolicyConfig {
    /// A policy with default parameters overridden by `overrides`; a parameter the policy does not
    /// read, or a value out of range, is an error (a typo must not silently leave a default in place).
    pub fn new(name: &str, overrides: &[(String, f64)]) -> Result<Self> {
        let kind = PolicyKind::parse(name)?;
        let mut params = Params::default();
        for (k, v) in overrides {
            let p = kind.params().iter().copied().find(|p| p.spec().name == k).ok_or_else(|| {
                let names: Vec<&str> = kind.params().iter().map(|p| p.spec().name).collect();
                CoreError::config(format!(
                    "policy {name:?} has no weight {k:?} (its weights: {})",
                    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
                ))
            })?;
            let spec = p.spec();
            if !(v.is_finite() && *v >= spec.min && *v <= spec.max) {
                return Err(CoreError::config(format!("weight {k:?} = {v} is outside {}..={}", spec.min, spec.max)));
            }
            params[p] = *v;
        }
        Ok(PolicyConfig { kind, params })
    }

    /// The policy's own parameters, for `Router.policy()` and the admin API.
    pub fn weights_list(&self) -> Vec<(&'static str, f64)> {
        self.kind.params().iter().map(|&p| (p.spec().name, self.params[p])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_round_trip() {
        for &k in PolicyKind::ALL {
            assert_eq!(PolicyKind::parse(k.as_str()).unwrap(), k);
        }
        assert!(PolicyKind::parse("fastest").is_err());
    }

    #[test]
    fn param_names_are_distinct_and_defaults_in_range() {
        let mut seen = HashSet::new();
        for &p in Param::ALL {
            let s = p.spec();
            assert!(seen.insert(s.name), "{} is spelled twice", s.name);
            assert!(s.min <= s.default && s.default <= s.max, "{}", s.name);
        }
    }

    #[test]
    fn weights_are_validated() {
        let p = PolicyConfig::new("cost", &[("kv_weight".into(), 2.0)]).unwrap();
        assert_eq!(p.params[Param::KvWeight], 2.0);
        assert_eq!(p.params[Param::QueueWeight], 1.0);
        assert!(PolicyConfig::new("cost", &[("kv_wieght".into(), 2.0)]).is_err());
        assert!(PolicyConfig::new("cost", &[("kv_knee".into(), 1.5)]).is_err());
        assert!(PolicyConfig::new("round_robin", &[("kv_weight".into(), 1.0)]).is_err());
        assert!(PolicyConfig::new("cost", &[("queue_weight".into(), f64::NAN)]).is_err());
        let listed = PolicyConfig::new("prefix_hash", &[]).unwrap().weights_list();
        assert_eq!(listed, vec![("queue_threshold", 8.0)]);
    }
}
