//! corral's own log: its events (tracing's), as `corral[APP]: message` lines on its standard
//! error, or as journal entries with the fields of the worker they are about.

use crate::output::Output;

/// corral's own events: `corral[APP]: message` lines on stderr, with `warning:`/`error:`
/// marked; under journald, entries with PRIORITY and the worker's fields where there is one.
pub fn init(app: &str, output: Output) {
    use tracing_subscriber::layer::SubscriberExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let layer = LogLayer {
        app: app.to_string(),
        prefix: format!("corral[{app}]: "),
        output,
    };
    let subscriber = tracing_subscriber::registry().with(filter).with(layer);
    let _ = tracing::subscriber::set_global_default(subscriber);
}

struct LogLayer {
    app: String,
    prefix: String,
    output: Output,
}

/// The fields corral's events carry: the message, and the worker it is about.
#[derive(Default)]
struct Fields {
    message: String,
    slot: Option<i64>,
    agent: bool,
    pid: Option<i64>,
    generation: Option<i64>,
}

impl tracing::field::Visit for Fields {
    fn record_i64(&mut self, field: &tracing::field::Field, v: i64) {
        let v = (v >= 0).then_some(v);
        match field.name() {
            "slot" => self.slot = v,
            "pid" => self.pid = v,
            "generation" => self.generation = v,
            _ => {}
        }
    }
    fn record_bool(&mut self, field: &tracing::field::Field, v: bool) {
        if field.name() == "agent" {
            self.agent = v;
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{v:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let level = *event.metadata().level();
        if self.output.is_journal() {
            use crate::journal::field;
            let prio: &[u8] = match level {
                tracing::Level::ERROR => b"3",
                tracing::Level::WARN => b"4",
                tracing::Level::INFO => b"6",
                _ => b"7",
            };
            let mut e = Vec::new();
            field(&mut e, "MESSAGE", f.message.as_bytes());
            field(&mut e, "PRIORITY", prio);
            field(&mut e, "SYSLOG_IDENTIFIER", b"corral");
            field(&mut e, "CORRAL_APP", self.app.as_bytes());
            if f.agent {
                field(&mut e, "CORRAL_WORKER", b"agent");
            }
            for (name, v) in [
                ("CORRAL_WORKER", f.slot),
                ("CORRAL_WORKER_PID", f.pid),
                ("CORRAL_GENERATION", f.generation),
            ] {
                if let Some(v) = v {
                    field(&mut e, name, v.to_string().as_bytes());
                }
            }
            self.output.line(e);
        } else {
            let mark = match level {
                tracing::Level::ERROR => "error: ",
                tracing::Level::WARN => "warning: ",
                _ => "",
            };
            let line = format!("{}{mark}{}\n", self.prefix, f.message);
            self.output.line(line.into_bytes());
        }
    }
}
