//! A value computed on another thread and waited for by the tests: the
//! QEMU sequences start together on first use, each in its thread, and
//! each test waits for the one it asserts on.

use std::sync::{Arc, Condvar, Mutex};

/// Set once by a sequence's thread, read by any number of tests.
#[derive(Debug)]
pub struct Shared<T>(Arc<(Mutex<Option<T>>, Condvar)>);

impl<T: Clone> Shared<T> {
    /// Empty.
    pub fn new() -> Self {
        Shared(Arc::new((Mutex::new(None), Condvar::new())))
    }
    /// Sets the value and wakes every waiter.
    pub fn set(&self, v: T) {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
        self.0 .1.notify_all();
    }
    /// Waits for the value.
    pub fn get(&self) -> T {
        let mut g = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(v) = g.as_ref() {
                return v.clone();
            }
            g = self.0 .1.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
    /// Another handle to the same cell (for the thread that sets it).
    pub fn handle(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<T: Clone> Default for Shared<T> {
    fn default() -> Self {
        Self::new()
    }
}
