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
    /// A frame did not fit: every later one is refused too (the socket is
    /// closed as a slow consumer, so its client resumes from before the first
    /// frame it missed, never across a hole).
    overflowed: bool,
    /// The pod drains, and the socket's task has not been told yet.
    drain_untold: bool,
    /// The socket must close (a close order, or a newer connection of its
    /// user took its place), once the frames queued before are written.
    must_close: bool,
    /// The socket's task waits while holding its frames: a push wakes it only
    /// once they crowd the queue, not for every frame it would leave queued.
    holding: bool,
}

/// What the socket's task is woken for.
pub enum Delivery {
    /// The next frame to write.
    Frame(Utf8Bytes),
    /// While the socket holds its frames (waiting for `Resume`): they fill half
    /// the queue, so it must let them flow before it overflows.
    Crowded,
    /// A frame did not fit: close the socket as a slow consumer.
    Overflowed,
    /// The pod drains: close within the drain window.
    Drain,
    /// Close now: see [`Conn::ordered_close`] for the code.
    MustClose,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue::default()),
            capacity,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().frames.len()
    }

    /// Queues `frame`, or marks the queue overflowed if it is full.
    pub(crate) fn push(&self, frame: Utf8Bytes) {
        let mut queue = self.lock();
        if queue.closed {
            return;
        }
        if queue.overflowed || queue.frames.len() >= self.capacity {
            queue.overflowed = true;
            let waiting = queue.waiting.take();
            drop(queue);
            if let Some(waker) = waiting {
                waker.wake();
            }
            return;
        }
        queue.frames.push_back(frame);
        let crowded = queue.frames.len() * 2 >= self.capacity;
        let waiting = if queue.holding && !crowded {
            None
        } else {
            queue.waiting.take()
        };
        drop(queue);
        // Woken outside the lock: the task may run at once on another thread.
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    /// Tells the socket's task that the pod drains.
    pub(crate) fn drain(&self) {
        self.tell(|queue| queue.drain_untold = true);
    }

    /// Tells the socket's task to close once what is queued is written.
    pub(crate) fn must_close(&self) {
        self.tell(|queue| queue.must_close = true);
    }

    fn tell(&self, what: impl FnOnce(&mut Queue)) {
        let mut queue = self.lock();
        what(&mut queue);
        let waiting = queue.waiting.take();
        drop(queue);
        if let Some(waker) = waiting {
            waker.wake();
        }
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

    /// Waits for what the socket's task must act on. While `holding`, frames
    /// stay queued and only a crowded queue, an overflow, the drain or an
    /// order to close wake it.
    ///
    /// With `yield_first`, the first poll only schedules the task again: the
    /// socket loop polls this first (an outbound frame is the common wake-up),
    /// and a queue that is never empty must not keep the loop from reading the
    /// socket.
    pub async fn recv(&mut self, holding: bool, yield_first: bool) -> Delivery {
        let mut yielded = !yield_first;
        poll_fn(|cx| {
            if !yielded {
                yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let capacity = self.conn.outbox.capacity;
            let mut queue = self.conn.outbox.lock();
            if queue.overflowed {
                return Poll::Ready(Delivery::Overflowed);
            }
            if queue.drain_untold {
                queue.drain_untold = false;
                return Poll::Ready(Delivery::Drain);
            }
            if queue.must_close && (holding || queue.frames.is_empty()) {
                return Poll::Ready(Delivery::MustClose);
            }
            if holding {
                if queue.frames.len() * 2 >= capacity {
                    return Poll::Ready(Delivery::Crowded);
                }
            } else if let Some(frame) = queue.frames.pop_front() {
                return Poll::Ready(Delivery::Frame(frame));
            }
            queue.holding = holding;
            match &mut queue.waiting {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                waiting => *waiting = Some(cx.waker().clone()),
            }
            Poll::Pending
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

#[cfg(test)]
mod tests {
    use super::Delivery;
    use crate::hub::Hub;
    use axum::extract::ws::Utf8Bytes;

    fn frame(n: u32) -> Utf8Bytes {
        Utf8Bytes::from(format!("frame {n}"))
    }

    fn text(delivery: Delivery) -> String {
        match delivery {
            Delivery::Frame(frame) => frame.as_str().to_owned(),
            Delivery::Crowded => "crowded".into(),
            Delivery::Overflowed => "overflowed".into(),
            Delivery::Drain => "drain".into(),
            Delivery::MustClose => "must close".into(),
        }
    }

    /// Frames come out in order; past the capacity the socket is told it
    /// overflowed, and no later frame gets in behind the missing one.
    #[tokio::test]
    async fn a_full_queue_refuses_every_later_frame_and_says_it_overflowed() {
        let (hub, _events) = Hub::for_tests(1);
        let (registration, mut inbox) = hub.register("carol", 2).await.expect("registered");
        registration.conn.push(frame(1));
        assert_eq!(text(inbox.recv(false, false).await), "frame 1");
        registration.conn.push(frame(2));
        registration.conn.push(frame(3));
        registration.conn.push(frame(4));
        assert_eq!(text(inbox.recv(false, false).await), "overflowed");
        assert_eq!(registration.conn.outbox.len(), 2, "frame 4 was refused");
    }

    /// While holding, frames stay queued until they fill half the queue; the
    /// drain is told once; `yield_first` still delivers on the next poll.
    #[tokio::test]
    async fn holding_waits_for_a_crowded_queue_and_the_drain_is_told_once() {
        let (hub, _events) = Hub::for_tests(1);
        let (registration, mut inbox) = hub.register("dave", 4).await.expect("registered");
        registration.conn.push(frame(1));
        registration.conn.push(frame(2));
        assert_eq!(text(inbox.recv(true, false).await), "crowded");
        hub.drain();
        assert_eq!(text(inbox.recv(false, true).await), "drain");
        assert_eq!(text(inbox.recv(false, false).await), "frame 1");
        assert_eq!(
            inbox.try_recv().map(|f| f.as_str().to_owned()),
            Some("frame 2".into())
        );
        assert!(inbox.try_recv().is_none());
    }

    /// An order to close comes after the frames queued before it, and at once
    /// while the socket holds its frames (they would never be written).
    #[tokio::test]
    async fn an_order_to_close_follows_the_frames_queued_before_it() {
        let (hub, _events) = Hub::for_tests(1);
        let (registration, mut inbox) = hub.register("erin", 8).await.expect("registered");
        registration.conn.push(frame(1));
        registration.conn.outbox.must_close();
        assert_eq!(text(inbox.recv(true, false).await), "must close");
        assert_eq!(text(inbox.recv(false, false).await), "frame 1");
        assert_eq!(text(inbox.recv(false, false).await), "must close");
    }
}
