//! Where time comes from. Daemons read the system clock; tests drive a
//! manual one, so rotation, expiry and caching are tested at any instant
//! without sleeping. Plain data: a clock is either the system's or a shared
//! hand-set instant.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A source of the current time; cheap to clone (clones share a manual
/// clock's instant).
#[derive(Clone, Debug)]
pub struct Clock(Source);

#[derive(Clone, Debug)]
enum Source {
    System,
    Manual(Arc<Mutex<SystemTime>>),
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Source::System)
    }

    /// A clock that stands at `start` until moved with [`Clock::advance`]
    /// or [`Clock::set`].
    pub fn manual(start: SystemTime) -> Self {
        Self(Source::Manual(Arc::new(Mutex::new(start))))
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        match &self.0 {
            Source::System => SystemTime::now(),
            Source::Manual(t) => match t.lock() {
                Ok(t) => *t,
                Err(poisoned) => *poisoned.into_inner(),
            },
        }
    }

    /// Moves a manual clock forward (the system clock cannot be moved:
    /// returns false).
    pub fn advance(&self, by: Duration) -> bool {
        self.set_with(|t| t + by)
    }

    /// Sets a manual clock (the system clock cannot be set: returns false).
    pub fn set(&self, to: SystemTime) -> bool {
        self.set_with(|_| to)
    }

    fn set_with(&self, f: impl FnOnce(SystemTime) -> SystemTime) -> bool {
        match &self.0 {
            Source::System => false,
            Source::Manual(t) => {
                let mut guard = match t.lock() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *guard = f(*guard);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let clock = Clock::manual(start);
        let other = clock.clone();
        assert_eq!(clock.now(), start);
        assert!(other.advance(Duration::from_secs(5)));
        assert_eq!(clock.now(), start + Duration::from_secs(5));
        assert!(clock.set(start));
        assert_eq!(other.now(), start);
        let system = Clock::system();
        assert!(!system.advance(Duration::from_secs(1)));
        assert!(system.now() > start);
    }
}
