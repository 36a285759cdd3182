//! Generation requests in flight, by id, so that `Abort` from any connection can end one: a
//! script that started a generation on one channel (or a gateway that routed it) cancels it
//! from another, where closing the stream is not an option.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{DaemonError, Result};

#[derive(Default)]
pub(crate) struct Requests {
    in_flight: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

/// A request's entry: its abort flag, removed from the registry when dropped (with its job).
pub(crate) struct Registration {
    id: String,
    aborted: Arc<AtomicBool>,
    requests: Arc<Requests>,
}

impl Requests {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AtomicBool>>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters `id`; refused while another request in flight has it.
    pub(crate) fn register(self: &Arc<Self>, id: String) -> Result<Registration> {
        let aborted = Arc::new(AtomicBool::new(false));
        let mut map = self.lock();
        if map.contains_key(&id) {
            return Err(DaemonError::DuplicateRequestId { id });
        }
        map.insert(id.clone(), Arc::clone(&aborted));
        Ok(Registration {
            id,
            aborted,
            requests: Arc::clone(self),
        })
    }

    /// Asks the request `id` to end; false when no request in flight has that id.
    pub(crate) fn abort(&self, id: &str) -> bool {
        match self.lock().get(id) {
            Some(flag) => {
                flag.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

impl Registration {
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn aborted(&self) -> bool {
        self.aborted.load(Ordering::Relaxed)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.requests.lock().remove(&self.id);
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_while_in_flight_and_free_again_after() {
        let r = Arc::new(Requests::default());
        let a = r.register("a".into()).unwrap();
        let e = r.register("a".into()).unwrap_err().to_string();
        assert!(e.contains("\"a\""), "{e}");
        assert!(!r.abort("b"));
        assert!(r.abort("a"));
        assert!(a.aborted());
        drop(a);
        assert!(!r.abort("a"));
        let again = r.register("a".into()).unwrap();
        assert!(!again.aborted());
    }
}
