//! The wait queue: requests over their tier's limit everywhere wait here (when it is on) in
//! (priority, age) order until a release makes room, instead of being shed at once.
use super::decide::Resumed;
use super::{Router, Waiter};
use crate::admission::Tier;
use crate::error::{CoreError, Result};
use crate::outcome::{Decision, Outcome, Queued, Reason};
use crate::request::Request;
use crate::scorer;

impl Router {
    pub fn resume(&mut self, wait_id: u64) -> Result<Decision> {
        let w = self.waiters.remove(&wait_id).ok_or(CoreError::UnknownWait(wait_id))?;
        self.wait_order.remove(&w.key);
        let exclude: Vec<&str> = w.exclude.iter().map(String::as_str).collect();
        let session = w.session_key.clone();
        Ok(self.decide(w.req, w.key.0, session.as_deref(), &exclude, Some((wait_id, w.key.1))))
    }

    pub fn cancel_wait(&mut self, wait_id: u64) -> Result<()> {
        let w = self.waiters.remove(&wait_id).ok_or(CoreError::UnknownWait(wait_id))?;
        self.wait_order.remove(&w.key);
        Ok(())
    }

    pub fn waiting_count(&self) -> usize {
        self.waiters.len()
    }

    /// Whether waiters of this model with equal or higher priority (and, for a resumed request,
    /// older ones) go first.
    pub(super) fn queue_ahead(&self, model: &str, tier: Tier, resumed: Resumed) -> bool {
        self.wait_queue_size > 0
            && self.wait_order.iter().any(|(&(t, seq), id)| {
                t <= tier
                    && resumed.is_none_or(|(_, my_seq)| (t, seq) < (tier, my_seq))
                    && self.waiters[id].req.model == model
            })
    }

    pub(super) fn hold_or_shed(
        &mut self,
        req: Request,
        tier: Tier,
        session_key: Option<&str>,
        exclude: &[&str],
        resumed: Resumed,
        retry: f64,
    ) -> Decision {
        if self.wait_queue_size == 0 {
            self.tier_stats[tier as usize].shed += 1;
            let msg = format!("{} priority traffic is over its limit on every backend", tier.name());
            return self.reject(Reason::Shed, tier, &req, retry, msg);
        }
        let (id, seq) = match resumed {
            Some(r) => r,
            None => {
                if self.waiters.len() >= self.wait_queue_size {
                    self.tier_stats[tier as usize].queue_full += 1;
                    return self.reject(Reason::QueueFull, tier, &req, retry, "the router's wait queue is full".into());
                }
                let id = self.next_id;
                self.next_id += 1;
                self.tier_stats[tier as usize].queued += 1;
                (id, id)
            }
        };
        let key = (tier, seq);
        let position = self.wait_order.range(..key).count() as u64;
        let model = req.model.clone();
        self.wait_order.insert(key, id);
        self.waiters.insert(
            id,
            Waiter {
                key,
                req,
                session_key: session_key.map(str::to_owned),
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
            },
        );
        self.count(Outcome::Queued, None);
        Decision::Queued(Queued { wait_id: id, tier, model, position })
    }

    /// Up to `limit` waiters (in priority, age order) that some backend now has room for, or whose
    /// model lost all its usable backends (resume will reject them rather than leave them hanging).
    pub fn wakeable(&self, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for (&(tier, _), &id) in &self.wait_order {
            if out.len() >= limit {
                break;
            }
            let w = &self.waiters[&id];
            let limits = self.limits[tier as usize];
            let mut any = false;
            let mut room = false;
            for &s in &self.order {
                let b = self.backend(s);
                if !b.serves(&w.req.model) || !b.usable() || w.exclude.contains(&b.id) {
                    continue;
                }
                any = true;
                let ttft = scorer::ttft(&self.policy.params, b, w.req.prompt_tokens);
                if limits.room(b.queue_depth(), ttft) {
                    room = true;
                    break;
                }
            }
            if room || !any {
                out.push(id);
            }
        }
        out
    }
}
