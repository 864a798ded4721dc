//! A socket's queue of frames to send: bounded, first in first out, and empty
//! until used.
//!
//! Why not a tokio `mpsc` channel: one allocates its shared state (about
//! 0.6 KB, cache-padded) and a first block of 32 slots (1 KB) when it is
//! created, so every idle socket carried 1.6 KB for frames it was not sending.
//! Here the queue is a `VecDeque` inside the connection, which holds no memory
//! while empty, and a waker. The dispatcher pushes, the socket's task pops;
//! the lock is held only to move a frame in or out, never across an `.await`.

use axum::extract::ws::Utf8Bytes;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use super::Conn;

/// Emptied queues with more room than this give it back: a socket that once
/// caught up on a burst does not keep the burst's memory while idle.
const KEPT_SLOTS: usize = 8;

/// The frames queued for one socket (the sending side, inside [`Conn`]).
pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    capacity: usize,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Utf8Bytes>,
    /// The socket's task, waiting for a frame.
    waiting: Option<Waker>,
    /// The socket's task is gone: frames pushed now would never leave.
    closed: bool,
}

/// What [`Outbox::push`] did with a frame.
pub(crate) enum Pushed {
    /// Queued; `queued` frames are waiting now, this one included.
    Queued { queued: usize },
    /// The queue is full: the socket is a slow consumer.
    Full,
    /// The socket's task is gone; the frame was dropped.
    Closed,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue::default()),
            capacity,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub(crate) fn push(&self, frame: Utf8Bytes) -> Pushed {
        let mut queue = self.lock();
        if queue.closed {
            return Pushed::Closed;
        }
        if queue.frames.len() >= self.capacity {
            return Pushed::Full;
        }
        queue.frames.push_back(frame);
        let queued = queue.frames.len();
        let waiting = queue.waiting.take();
        drop(queue);
        // Woken outside the lock: the task may run at once on another thread.
        if let Some(waker) = waiting {
            waker.wake();
        }
        Pushed::Queued { queued }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic elsewhere while holding it left the frames intact.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The receiving side of a connection's [`Outbox`], owned by its socket's task.
pub struct Inbox {
    conn: Arc<Conn>,
}

impl Inbox {
    pub(crate) fn new(conn: Arc<Conn>) -> Inbox {
        Inbox { conn }
    }

    /// Waits for the next frame.
    pub async fn recv(&mut self) -> Utf8Bytes {
        poll_fn(|cx| {
            let mut queue = self.conn.outbox.lock();
            match queue.frames.pop_front() {
                Some(frame) => Poll::Ready(frame),
                None => {
                    match &mut queue.waiting {
                        Some(waker) if waker.will_wake(cx.waker()) => {}
                        waiting => *waiting = Some(cx.waker().clone()),
                    }
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The next queued frame, without waiting. An emptied queue gives its
    /// memory back.
    pub fn try_recv(&mut self) -> Option<Utf8Bytes> {
        let mut queue = self.conn.outbox.lock();
        let frame = queue.frames.pop_front();
        if frame.is_none() && queue.frames.capacity() > KEPT_SLOTS {
            queue.frames = VecDeque::new();
        }
        frame
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut queue = self.conn.outbox.lock();
        queue.closed = true;
        queue.frames = VecDeque::new();
        queue.waiting = None;
    }
}
