//! Handing work from a network thread to a worker thread in bursts.
//!
//! A network thread (a single-threaded tokio runtime) that sends each job to a worker thread
//! as it comes wakes that worker once per job: for a tree of small files, once per file, and the
//! futex wake-ups and context switches cost more than the files' bytes (on 2 cores, 42 % of the
//! receiver's futex calls were its writer waking for single jobs). A [`Burst`] sender instead
//! collects the jobs made during one turn of the runtime and hands them over as one batch when
//! the runtime is about to sleep ([`before_park`], installed by [`crate::transport::runtime`]),
//! or every [`Burst::MAX`] jobs. Order is kept: one queue per worker, batches in order.
//!
//! On a thread whose runtime has not yet been seen going to sleep (another thread, a test, the
//! runtime's first turn) every job goes at once, as through a plain channel: a job can never be
//! held by a thread that will not flush it.
//!
//! A plain thread that holds work back the same way (the sender's reader, [`Held`]) registers
//! it with [`hold_on_this_thread`]; whatever it is about to block on ([`hand_over_held`], called
//! by the ring and the sender's answer board before they wait) gets the held work first, so that
//! nothing waits for work that is sitting in the waiting thread's own hands.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, Weak};

trait Flush: Send + Sync {
    fn flush(&self);
}

thread_local! {
    /// The queues to flush before this thread's runtime sleeps.
    static HOOKS: RefCell<Vec<Weak<dyn Flush>>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread's runtime runs [`before_park`].
    static PARKS: Cell<bool> = const { Cell::new(false) };
}

/// Work a plain thread holds back to hand over in bursts.
pub(crate) trait Held {
    /// Whether anything is held.
    fn holds(&self) -> bool;
    /// Hands everything held over.
    fn hand_over(&self);
}

thread_local! {
    static HELD: RefCell<Option<Rc<dyn Held>>> = const { RefCell::new(None) };
}

/// Registers what this thread holds back (`None`: nothing any more).
pub(crate) fn hold_on_this_thread(held: Option<Rc<dyn Held>>) {
    HELD.set(held);
}

/// Whether this thread holds work back that must go before it blocks.
pub(crate) fn holding() -> bool {
    HELD.with_borrow(|h| h.as_ref().is_some_and(|h| h.holds()))
}

/// Hands over what this thread holds back, before it blocks. Call it with no lock held that
/// the receiving side may need.
pub(crate) fn hand_over_held() {
    let held = HELD.with_borrow(|h| h.clone());
    if let Some(h) = held {
        h.hand_over();
    }
}

/// Run by a network runtime just before its thread sleeps: hands over every pending burst.
pub(crate) fn before_park() {
    PARKS.set(true);
    HOOKS.with_borrow_mut(|hooks| {
        hooks.retain(|h| match h.upgrade() {
            Some(q) => {
                q.flush();
                true
            }
            None => false,
        })
    });
}

struct Queue<T> {
    tx: std_mpsc::Sender<Vec<T>>,
    pending: Mutex<Vec<T>>,
    gone: AtomicBool,
}

impl<T: Send> Queue<T> {
    /// Hands over what is pending; the batch back if the worker is gone.
    fn hand_over(&self) -> Result<(), Vec<T>> {
        let batch = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.is_empty() {
                return Ok(());
            }
            // The next burst is likely as long: room for it at once, not grown by doubling.
            let room = pending.len();
            std::mem::replace(&mut *pending, Vec::with_capacity(room))
        };
        self.tx.send(batch).map_err(|e| {
            self.gone.store(true, Ordering::Relaxed);
            e.0
        })
    }
}

impl<T: Send> Flush for Queue<T> {
    fn flush(&self) {
        let _ = self.hand_over();
    }
}

impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        let batch = std::mem::take(self.pending.get_mut().unwrap_or_else(|e| e.into_inner()));
        if !batch.is_empty() {
            let _ = self.tx.send(batch);
        }
    }
}

/// The sending side: cloned into every task that makes jobs.
pub(crate) struct Burst<T: Send + 'static> {
    queue: Arc<Queue<T>>,
}

impl<T: Send + 'static> Clone for Burst<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

/// The worker's side: single jobs, out of the batches.
pub(crate) struct Jobs<T> {
    rx: std_mpsc::Receiver<Vec<T>>,
    batch: std::vec::IntoIter<T>,
}

/// A queue from this (network) thread to a worker.
pub(crate) fn channel<T: Send + 'static>() -> (Burst<T>, Jobs<T>) {
    let (tx, rx) = std_mpsc::channel();
    let queue = Arc::new(Queue {
        tx,
        pending: Mutex::new(Vec::new()),
        gone: AtomicBool::new(false),
    });
    let hook: Arc<dyn Flush> = queue.clone();
    HOOKS.with_borrow_mut(|hooks| hooks.push(Arc::downgrade(&hook)));
    (
        Burst { queue },
        Jobs {
            rx,
            batch: Vec::new().into_iter(),
        },
    )
}

impl<T: Send + 'static> Burst<T> {
    /// Most jobs held before they are handed over anyway.
    pub(crate) const MAX: usize = 64;

    /// Queues `job`; the job back if the worker is gone.
    pub(crate) fn send(&self, job: T) -> Result<(), std_mpsc::SendError<T>> {
        self.queue_job(job, false)
    }

    /// Queues `job` and hands over everything pending now; the job back if the worker is gone.
    pub(crate) fn send_now(&self, job: T) -> Result<(), std_mpsc::SendError<T>> {
        self.queue_job(job, true)
    }

    /// Queues `job`, and hands the pending jobs over if `now`, if they make a full burst, or if
    /// this thread's runtime is not known to flush before it sleeps.
    fn queue_job(&self, job: T, now: bool) -> Result<(), std_mpsc::SendError<T>> {
        if self.queue.gone.load(Ordering::Relaxed) {
            return Err(std_mpsc::SendError(job));
        }
        let full = {
            let mut p = self.queue.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.push(job);
            p.len() >= Self::MAX
        };
        if now || full || !PARKS.get() {
            // The batch handed back ends with `job`: this thread queued it last.
            self.queue.hand_over().map_err(|mut batch| {
                std_mpsc::SendError(batch.pop().expect("the job just queued"))
            })?;
        }
        Ok(())
    }
}

impl<T> Jobs<T> {
    /// The next job if one is there now.
    pub(crate) fn try_recv(&mut self) -> Result<T, std_mpsc::TryRecvError> {
        if let Some(job) = self.batch.next() {
            return Ok(job);
        }
        loop {
            self.batch = self.rx.try_recv()?.into_iter();
            if let Some(job) = self.batch.next() {
                return Ok(job);
            }
        }
    }

    /// The next job, waiting for it; `None` once every sender is gone.
    pub(crate) fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(job) = self.batch.next() {
                return Some(job);
            }
            self.batch = self.rx.recv().ok()?.into_iter();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_go_at_once_where_no_runtime_sleeps_and_in_bursts_where_one_does() {
        let (tx, mut rx) = channel::<u32>();
        tx.send(1).unwrap();
        assert_eq!(rx.try_recv(), Ok(1), "no runtime here: at once");
        let rt = crate::transport::runtime().unwrap();
        let got = rt.block_on(async move {
            // Let the runtime sleep once, so this thread is known to flush before it sleeps.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            for i in 2..5 {
                tx.send(i).unwrap();
            }
            assert!(rx.try_recv().is_err(), "held until the runtime sleeps");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            let got: Vec<u32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
            drop(tx);
            (got, rx)
        });
        let (got, mut rx) = got;
        assert_eq!(got, [2, 3, 4]);
        assert_eq!(rx.recv(), None);
    }

    #[test]
    fn a_full_burst_goes_without_waiting_and_a_gone_worker_returns_the_job() {
        let rt = crate::transport::runtime().unwrap();
        rt.block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            let (tx, mut rx) = channel::<usize>();
            for i in 0..Burst::<usize>::MAX {
                tx.send(i).unwrap();
            }
            assert_eq!(rx.try_recv(), Ok(0));
            tx.send_now(99).unwrap();
            assert_eq!(rx.recv(), Some(1));
            drop(rx);
            assert_eq!(tx.send_now(7), Err(std_mpsc::SendError(7)));
            assert_eq!(tx.send(8), Err(std_mpsc::SendError(8)));
        });
    }
}
