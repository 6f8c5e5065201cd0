//! iceoryx2 (the crates.io crate), the closest Rust prior art, doing the same ping-pong between
//! two processes: only with the `iceoryx2` feature (`cargo xtask bench` turns it on).
//!
//! Two publish-subscribe services of `u64`, parent → child and child → parent, each with
//! `history_size(0)`, `subscriber_max_buffer_size(1)` and safe overflow: iceoryx2's own
//! latency-benchmark settings. Samples are loaned, written in place and sent (its zero-copy
//! API). Spinning, both sides busy-poll `receive()`, iceoryx2's fastest mode. Asleep, the child
//! blocks in an event service's `Listener::blocking_wait` (iceoryx2's way to avoid busy waiting:
//! a counting bit set in shared memory plus a Unix datagram socket to wake the listener) and the
//! parent notifies after each send, then busy-polls for the answer.

#[cfg(feature = "iceoryx2")]
mod imp {
    use std::time::{Duration, Instant};

    use iceoryx2::{port::publisher::Publisher, port::subscriber::Subscriber, prelude::*};

    use crate::util::{self, Count, Error, Peer, Result, Watchdog};

    /// The value that tells the child to stop.
    const STOP: u64 = u64::MAX;

    struct Ports {
        node: Node<ipc::Service>,
        publisher: Publisher<ipc::Service, u64, ()>,
        subscriber: Subscriber<ipc::Service, u64, ()>,
    }

    fn service_name(s: &str) -> Result<ServiceName> {
        ServiceName::new(s).map_err(|e| Error::msg(format!("iceoryx2 service name {s:?}: {e:?}")))
    }

    fn e<E: std::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> Error {
        move |e| Error::msg(format!("iceoryx2 {what}: {e:?}"))
    }

    /// The two services of the pair `name`; `parent` publishes on the first.
    fn ports(name: &str, parent: bool) -> Result<Ports> {
        set_log_level(LogLevel::Error);
        let node = NodeBuilder::new()
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<ipc::Service>()
            .map_err(e("node"))?;
        let service = |dir: &str| {
            node.service_builder(&service_name(&format!("{name}/{dir}"))?)
                .publish_subscribe::<u64>()
                .history_size(0)
                .subscriber_max_buffer_size(1)
                .enable_safe_overflow(true)
                .open_or_create()
                .map_err(e("publish-subscribe service"))
        };
        let (out, back) = if parent {
            ("a2b", "b2a")
        } else {
            ("b2a", "a2b")
        };
        let publisher = service(out)?
            .publisher_builder()
            .create()
            .map_err(e("publisher"))?;
        let subscriber = service(back)?
            .subscriber_builder()
            .create()
            .map_err(e("subscriber"))?;
        Ok(Ports {
            node,
            publisher,
            subscriber,
        })
    }

    fn event(
        node: &Node<ipc::Service>,
        name: &str,
    ) -> Result<iceoryx2::service::port_factory::event::PortFactory<ipc::Service>> {
        node.service_builder(&service_name(&format!("{name}/wake"))?)
            .event()
            .open_or_create()
            .map_err(e("event service"))
    }

    fn send(p: &Publisher<ipc::Service, u64, ()>, v: u64) -> Result<()> {
        let sample = p.loan_uninit().map_err(e("loan"))?;
        sample.write_payload(v).send().map_err(e("send"))?;
        Ok(())
    }

    /// Round trips between two processes; `pause` (asleep) makes the child block on an event.
    pub(crate) fn round_trips(count: Count) -> Result<Vec<u64>> {
        let pause = count.pause;
        let name = util::unique_name("iox");
        let p = ports(&name, true)?;
        let notifier = match pause {
            Some(_) => Some(
                event(&p.node, &name)?
                    .notifier_builder()
                    .create()
                    .map_err(e("notifier"))?,
            ),
            None => None,
        };
        let mode = if pause.is_some() { "sleep" } else { "spin" };
        let mut peer = Peer::spawn("iceoryx2-echo", &[name, mode.to_owned()], None)?;
        let notify = || -> Result<()> {
            if let Some(n) = &notifier {
                n.notify().map_err(e("notify"))?;
            }
            Ok(())
        };
        // Until the child's ports are connected, samples go nowhere: send 0 until it answers.
        let start = Instant::now();
        'handshake: loop {
            send(&p.publisher, 0)?;
            notify()?;
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(2) {
                if let Some(s) = p.subscriber.receive().map_err(e("receive"))?
                    && *s == 0
                {
                    break 'handshake;
                }
            }
            peer.check_alive()?;
            if start.elapsed() > Duration::from_secs(60) {
                return Err(Error::msg("iceoryx2: no answer from the child for 60 s"));
            }
        }
        let mut samples = Vec::with_capacity(count.n);
        let start = Instant::now();
        let mut i = 0usize;
        while !count.done(samples.len(), start) {
            count.pause();
            let v = i as u64 + 1;
            let t = Instant::now();
            send(&p.publisher, v)?;
            notify()?;
            let mut dog = Watchdog::new("iceoryx2 round trip");
            loop {
                if let Some(s) = p.subscriber.receive().map_err(e("receive"))?
                    && *s == v
                {
                    break;
                }
                if dog.tick() {
                    dog.check()?;
                    peer.check_alive()?;
                }
            }
            let ns = util::ns_since(t);
            if count.timed(i, start) {
                samples.push(ns);
            }
            i += 1;
        }
        send(&p.publisher, STOP)?;
        notify()?;
        peer.finish()?;
        Ok(samples)
    }

    /// The child: `args` = [pair name, `spin` or `sleep`]. Echoes every value until [`STOP`].
    pub(crate) fn echo_child(args: &[String]) -> Result<()> {
        let name: String = util::arg(args, 0, "pair name")?;
        let sleep = util::arg::<String>(args, 1, "mode")? == "sleep";
        let p = ports(&name, false)?;
        let listener = if sleep {
            Some(
                event(&p.node, &name)?
                    .listener_builder()
                    .create()
                    .map_err(e("listener"))?,
            )
        } else {
            None
        };
        // Empty polls since the last value, and when they began: the child gives up after a
        // minute of silence (the clock is read only every 64Ki polls while spinning).
        let mut quiet: u64 = 0;
        let mut quiet_since = Instant::now();
        loop {
            if let Some(l) = &listener {
                l.timed_wait(|_| {}, Duration::from_secs(1))
                    .map_err(e("listener wait"))?;
            }
            let mut got = false;
            while let Some(s) = p.subscriber.receive().map_err(e("receive"))? {
                let v = *s;
                drop(s);
                if v == STOP {
                    return Ok(());
                }
                send(&p.publisher, v)?;
                got = true;
            }
            if got {
                quiet = 0;
                continue;
            }
            if quiet == 0 {
                quiet_since = Instant::now();
            }
            quiet += 1;
            if (listener.is_some() || quiet & 0xffff == 0)
                && quiet_since.elapsed() > Duration::from_secs(60)
            {
                return Err(Error::msg(
                    "iceoryx2 child: nothing from the parent for 60 s",
                ));
            }
        }
    }
}

#[cfg(not(feature = "iceoryx2"))]
mod imp {
    use crate::util::{Count, Error, Result};

    fn not_built() -> Error {
        Error::msg("built without the `iceoryx2` feature")
    }

    /// Not built: an error saying so.
    pub(crate) fn round_trips(_count: Count) -> Result<Vec<u64>> {
        Err(not_built())
    }

    /// Not built: an error saying so.
    pub(crate) fn echo_child(_args: &[String]) -> Result<()> {
        Err(not_built())
    }
}

pub(crate) use imp::{echo_child, round_trips};

/// Whether the iceoryx2 rows are built in.
pub(crate) const BUILT: bool = cfg!(feature = "iceoryx2");
