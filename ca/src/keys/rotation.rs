//! Key rotation, the same for X.509 and JWT signing keys: each replica's
//! keys go through a journal of states kept in the database. With `L` a
//! key's lifetime:
//!
//! ```text
//!   prepared ──(≤ min(L/6, 7 d) left on the active key,
//!   │           and published for ≥ min(L/12, 10 s))──▶ active ──▶ old ──(not_after)──▶ gone
//!   └── made when the active key has ≤ min(L/2, 30 d) left
//! ```
//!
//! A prepared key is in the bundle from the moment it is made and signs
//! only after everyone has had time to learn it; nothing outlives the key
//! that signed it, and keys stay in the bundle until then. Which step comes
//! next is [`next_step`], a pure function of the keys and the time, tested
//! without waiting; [`crate::keys::slot`] carries the steps out for both
//! kinds.

use std::time::Duration;

use crate::store::{CaKeyRecord, JwtKeyRecord, KeyJournal, KeyStatus};

/// Longest wait between preparing a key and letting it sign.
const MAX_PUBLISH_GRACE: Duration = Duration::from_secs(10);

/// What rotation needs to know of a key of either kind.
pub(crate) trait RotatingKey {
    /// Its ID.
    fn id(&self) -> &str;
    /// Where it is in its life.
    fn journal(&self) -> &KeyJournal;
}

impl RotatingKey for JwtKeyRecord {
    fn id(&self) -> &str {
        &self.kid
    }
    fn journal(&self) -> &KeyJournal {
        &self.journal
    }
}

impl RotatingKey for CaKeyRecord {
    fn id(&self) -> &str {
        &self.id
    }
    fn journal(&self) -> &KeyJournal {
        &self.journal
    }
}

/// The thresholds of one key lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// Key lifetime, seconds.
    pub lifetime: i64,
    /// Prepare the next key when the active one has this much left.
    pub prepare_at: i64,
    /// Activate the prepared key when the active one has this much left.
    pub activate_at: i64,
    /// Least time a prepared key is published before it signs.
    pub publish_grace: i64,
}

impl Schedule {
    /// The thresholds for keys of `lifetime` seconds.
    pub(crate) fn for_lifetime(lifetime: u64) -> Self {
        let l = lifetime as i64;
        Self {
            lifetime: l,
            prepare_at: (l / 2).min(30 * 86400),
            activate_at: (l / 6).min(7 * 86400),
            publish_grace: (l / 12).min(MAX_PUBLISH_GRACE.as_secs() as i64).max(1),
        }
    }

    /// How often the rotation should be looked at.
    pub(crate) fn check_interval(&self) -> Duration {
        Duration::from_secs((self.lifetime as u64 / 48).clamp(1, 60))
    }
}

/// What rotation does next for one replica's keys of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// No key signs and none is prepared (first start, or every key lost):
    /// make one and sign with it at once.
    CreateActive,
    /// Make the next key and publish it.
    Prepare,
    /// The prepared key takes over; the active one (if any) becomes old.
    Activate {
        /// The prepared key.
        prepared: String,
        /// The key it replaces.
        retiring: Option<String>,
    },
    /// Nothing to do.
    Wait,
}

/// The next rotation step for the keys of one replica (`mine`, unexpired)
/// at `now` (Unix seconds).
pub(crate) fn next_step<K: RotatingKey>(mine: &[K], schedule: &Schedule, now: i64) -> Step {
    let newest = |status| {
        mine.iter()
            .filter(|k| k.journal().status == status && k.journal().not_after > now)
            .max_by_key(|k| (k.journal().not_after, k.id().to_owned()))
    };
    let active = newest(KeyStatus::Active);
    let prepared = newest(KeyStatus::Prepared);
    match (active, prepared) {
        (None, None) => Step::CreateActive,
        (None, Some(p)) => Step::Activate {
            prepared: p.id().to_owned(),
            retiring: None,
        },
        (Some(a), prepared) => {
            let left = a.journal().not_after - now;
            match prepared {
                None if left <= schedule.prepare_at => Step::Prepare,
                Some(p)
                    if left <= schedule.activate_at
                        && now - p.journal().created_at >= schedule.publish_grace =>
                {
                    Step::Activate {
                        prepared: p.id().to_owned(),
                        retiring: Some(a.id().to_owned()),
                    }
                }
                _ => Step::Wait,
            }
        }
    }
}

/// The operator's incident commands, as rules over one replica's keys of
/// one kind; each refusal says what to do instead.
pub(crate) mod incident {
    use super::{KeyStatus, RotatingKey, Schedule};

    /// `prepare`: refused while a key is prepared already.
    pub(crate) fn may_prepare<K: RotatingKey>(mine: &[K]) -> Result<(), String> {
        match mine
            .iter()
            .find(|k| k.journal().status == KeyStatus::Prepared)
        {
            Some(p) => Err(format!(
                "key {} is already prepared on this replica; activate it with `signet ca activate`",
                p.id()
            )),
            None => Ok(()),
        }
    }

    /// `activate`: the prepared key, once published for the grace period
    /// (every agent must have it before anything it signs reaches a peer).
    pub(crate) fn to_activate<'k, K: RotatingKey>(
        mine: &'k [K],
        schedule: &Schedule,
        now: i64,
    ) -> Result<&'k K, String> {
        let Some(p) = mine
            .iter()
            .find(|k| k.journal().status == KeyStatus::Prepared)
        else {
            return Err("no key is prepared on this replica; run `signet ca prepare` first".into());
        };
        let published = now - p.journal().created_at;
        if published < schedule.publish_grace {
            return Err(format!(
                "key {} was published {published}s ago; wait {}s more so every agent has it in its bundle",
                p.id(),
                schedule.publish_grace - published
            ));
        }
        Ok(p)
    }

    /// `taint`: only a key that no longer signs (old or lost), once.
    pub(crate) fn may_taint<K: RotatingKey>(key: &K) -> Result<(), String> {
        let id = key.id();
        match key.journal().status {
            KeyStatus::Active => Err(format!(
                "key {id} is active; run `signet ca prepare` and `signet ca activate` on its replica first, then taint it"
            )),
            KeyStatus::Prepared => Err(format!(
                "key {id} is prepared and has signed nothing; revoke it instead"
            )),
            KeyStatus::Revoked => Err(format!("key {id} is revoked already")),
            KeyStatus::Old | KeyStatus::Lost if key.journal().tainted => {
                Err(format!("key {id} is tainted already"))
            }
            KeyStatus::Old | KeyStatus::Lost => Ok(()),
        }
    }

    /// `revoke`: not the active key, not twice, and without `force` not
    /// while what it signed may still be valid (`max_ttl` past its
    /// retirement, never past the key itself).
    pub(crate) fn may_revoke<K: RotatingKey>(
        key: &K,
        max_ttl: i64,
        force: bool,
        now: i64,
    ) -> Result<(), String> {
        let id = key.id();
        match key.journal().status {
            KeyStatus::Active => {
                return Err(format!(
                    "key {id} is active; run `signet ca prepare` and `signet ca activate` on its replica first"
                ))
            }
            KeyStatus::Revoked => return Err(format!("key {id} is revoked already")),
            _ => {}
        }
        let alive_until = match key.journal().status {
            KeyStatus::Prepared => 0,
            _ if key.journal().retired_at > 0 => {
                (key.journal().retired_at + max_ttl).min(key.journal().not_after)
            }
            _ => key.journal().not_after,
        };
        if now < alive_until && !force {
            return Err(format!(
                "what key {id} signed may be valid for another {}s and would stop verifying; taint it first (agents replace it within seconds), then revoke with --force",
                alive_until - now
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::JwtKeyRecord;

    fn key(kid: &str, status: KeyStatus, created: i64, lifetime: i64) -> JwtKeyRecord {
        JwtKeyRecord {
            kid: kid.into(),
            alg: "ES256".into(),
            public_key: Vec::new(),
            replica: "r".into(),
            journal: KeyJournal::new(status, created - 60, created + lifetime, created),
        }
    }

    /// Runs the schedule over three lifetimes, applying each step, and
    /// checks the rotation promises at every second.
    fn simulate(lifetime: i64, max_token_ttl: i64) {
        let schedule = Schedule::for_lifetime(lifetime as u64);
        let mut keys: Vec<JwtKeyRecord> = Vec::new();
        let mut n = 0;
        let mut activations = Vec::new();
        for now in 0..3 * lifetime {
            keys.retain(|k| k.journal.not_after > now);
            loop {
                match next_step(&keys, &schedule, now) {
                    Step::Wait => break,
                    step @ (Step::CreateActive | Step::Prepare) => {
                        n += 1;
                        let status = if step == Step::CreateActive {
                            assert_eq!(now, 0, "only the first key signs without being prepared");
                            KeyStatus::Active
                        } else {
                            KeyStatus::Prepared
                        };
                        keys.push(key(&format!("k{n}"), status, now, lifetime));
                    }
                    Step::Activate { prepared, retiring } => {
                        for k in &mut keys {
                            if Some(&k.kid) == retiring.as_ref() {
                                k.journal.status = KeyStatus::Old;
                            }
                            if k.kid == prepared {
                                // Published long enough before signing.
                                assert!(now - k.journal.created_at >= schedule.publish_grace);
                                k.journal.status = KeyStatus::Active;
                                activations.push(now);
                            }
                        }
                    }
                }
            }
            let active: Vec<_> = keys
                .iter()
                .filter(|k| k.journal.status == KeyStatus::Active)
                .collect();
            assert_eq!(active.len(), 1, "at {now}: {keys:?}");
            // A token signed now lasts its full lifetime: the key outlives it.
            assert!(
                active[0].journal.not_after - now > max_token_ttl,
                "at {now} the active key has {}s left",
                active[0].journal.not_after - now
            );
        }
        assert!(activations.len() >= 3, "{activations:?}");
    }

    #[test]
    fn rotation_keeps_one_published_active_key_that_outlives_every_token() {
        simulate(86400, 3600); // the defaults
        simulate(12, 2); // the end-to-end test's
        simulate(60, 10); // the smallest lifetime config allows for 10 s tokens
    }

    #[test]
    fn steps_at_each_threshold_both_sides() {
        let s = Schedule::for_lifetime(600); // prepare at 300 left, activate at 100
        assert_eq!(next_step::<JwtKeyRecord>(&[], &s, 0), Step::CreateActive);
        let a = key("a", KeyStatus::Active, 0, 600);
        assert_eq!(next_step(std::slice::from_ref(&a), &s, 299), Step::Wait);
        assert_eq!(next_step(std::slice::from_ref(&a), &s, 300), Step::Prepare);
        let p = key("p", KeyStatus::Prepared, 300, 600);
        assert_eq!(next_step(&[a.clone(), p.clone()], &s, 499), Step::Wait);
        let activate = Step::Activate {
            prepared: "p".into(),
            retiring: Some("a".into()),
        };
        assert_eq!(next_step(&[a.clone(), p.clone()], &s, 500), activate);
        // A key prepared late (the CA was down) is published for the grace
        // period before it signs.
        let late = key("p", KeyStatus::Prepared, 550, 600);
        assert_eq!(s.publish_grace, 10);
        assert_eq!(next_step(&[a.clone(), late.clone()], &s, 559), Step::Wait);
        assert_eq!(next_step(&[a.clone(), late], &s, 560), activate);
        // With no active key left, a prepared key takes over at once.
        assert_eq!(
            next_step(&[p], &s, 700),
            Step::Activate {
                prepared: "p".into(),
                retiring: None
            }
        );
    }
}
