//! What a decision can say about itself: the branch that routed a request, the reason one was
//! turned away, and the three decision values. Every branch and reason string the core emits is
//! spelled here once; `ALL` lists are exported to Python and documented in docs/routing.md.
use crate::admission::Tier;

/// Declares a fieldless enum with its exhaustive `ALL` list and `as_str()` from one table, so a
/// variant cannot be missing from the list or spelled twice.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }
    };
}
pub(crate) use named_enum;

named_enum! {
    /// Why a routed request went where it went (the metric label and the `x-kvroute-branch` header).
    Branch {
        RoundRobin => "round_robin",
        Random => "random",
        LeastInflight => "least_inflight",
        PowerOfTwo => "power_of_two",
        LeastLoad => "least_load",
        PrefixHashAffinity => "prefix_hash:affinity",
        PrefixHashOverflow => "prefix_hash:overflow",
        SessionSticky => "session:sticky",
        SessionSpill => "session:spill",
        SessionNoKey => "session:no_key",
        /// `pinned`: the backend the session key names.
        PinnedNamed => "pinned:named",
        /// `pinned`: no key, or the backend it names is not a candidate: fewest in flight.
        PinnedFallback => "pinned:fallback",
        CostCold => "cost:cold",
        CostCacheAffinity => "cost:cache_affinity",
        CostLoadSpread => "cost:load_spread",
        /// The lowest weighted sum of normalised scorer values.
        Weighted => "weighted",
        /// The policy's pick had no room for the tier; another backend had.
        AdmissionSpill => "admission:spill",
    }
}

named_enum! {
    /// Why a request was turned away (`Rejected.reason`).
    Reason {
        /// No backends are configured, or none usable for the model.
        NoBackend => "no_backend",
        /// Backends exist but none lists the model.
        UnknownModel => "unknown_model",
        /// The tier is over its limit on every backend and the wait queue is off.
        Shed => "shed",
        /// The tier is over its limit and the wait queue is full.
        QueueFull => "queue_full",
    }
}

named_enum! {
    /// What a request's block keys are made of (`Routed.key_space`).
    KeySpace {
        /// Exact token ids: a token-list prompt, or text through the model's tokenizer.
        Tokens => "tokens",
        /// The canonical byte stream: no tokenizer is configured for the model.
        Bytes => "bytes",
        /// The model has a tokenizer but this prompt could not be tokenized (template error,
        /// non-text parts): routed on bytes.
        BytesFallback => "bytes:tokenize_failed",
    }
}

/// A key of the snapshot's `branches` counts: the branch that routed, the reason that rejected,
/// or `queued`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    Branch(Branch),
    Reason(Reason),
    Queued,
}

impl Outcome {
    pub const QUEUED: &'static str = "queued";

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Branch(b) => b.as_str(),
            Outcome::Reason(r) => r.as_str(),
            Outcome::Queued => Self::QUEUED,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Routed {
    pub ticket: u64,
    pub backend_id: String,
    pub branch: Branch,
    pub model: String,
    pub stream: bool,
    pub max_tokens: Option<u64>,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub predicted_ttft_s: f64,
    pub key_space: KeySpace,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    pub reason: Reason,
    pub tier: Tier,
    pub model: String,
    pub retry_after_s: f64,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Queued {
    pub wait_id: u64,
    pub tier: Tier,
    pub model: String,
    pub position: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Routed(Routed),
    Rejected(Rejected),
    Queued(Queued),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_distinct() {
        let mut seen = HashSet::new();
        let names = Branch::ALL.iter().map(|b| b.as_str()).chain(Reason::ALL.iter().map(|r| r.as_str()));
        for s in names.chain([Outcome::QUEUED]) {
            assert!(seen.insert(s), "{s} is spelled twice");
        }
    }
}
