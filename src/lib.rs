//! corral: run N copies of a server behind shared, socket-activated listeners, the systemd way.
//!
//! The crate is split by what each part is:
//! - [`config`]: the app config file, validated with line:column diagnostics;
//! - [`envfile`]: systemd's `EnvironmentFile=` format, for the config's `environment_file`;
//! - [`escape`]: others' text (a worker's status, a config's key names) made safe to show;
//! - [`supervisor`]: the pure decision core, `step(event, now) -> actions`;
//! - [`runtime`]: the single event loop that performs those actions (and, in `runtime::upgrade`,
//!   its upgrade in place);
//! - [`signals`]: what each signal sent to the supervisor does;
//! - [`terminal`]: the terminal corral runs in, and whether a SIGHUP is its hangup;
//! - [`spawn`]: fork/exec of workers, and the other foreign calls (with [`ebpf`], the only
//!   `unsafe` in corral);
//! - [`notify`]: the sd_notify protocol, both as a receiver for workers and a sender to systemd;
//! - [`listen`]: listening sockets, inherited from systemd or bound here;
//! - [`balance`]: balanced listeners, a socket per worker with connections steered by corral;
//! - [`ebpf`]: the eBPF program that deals a balanced listener's connections out in turn;
//! - [`bus`]: messages between the agent and the workers, passed on by corral;
//! - [`control`]: the control socket protocol and its client;
//! - [`node`]: the Node.js preload and PM2's variables;
//! - [`nofile`]: corral's own open-file limit, sized for its workers;
//! - [`output`]: relay of worker stdout/stderr lines;
//! - [`own_log`]: corral's own events, as lines or journal entries;
//! - [`handover`]: the state an upgrade in place hands to the next binary across execve(2);
//! - [`carry`]: the descriptors carried across that exec;
//! - [`version`]: the version the binary says it is;
//! - [`lines`]: worker output cut into lines, within one budget for the partial lines;
//! - [`procfs`]: what /proc says about processes, and workers' process trees;
//! - [`rundir`]: the runtime directory and the sockets and files corral keeps there;
//! - [`probe`]: readiness of servers that never say READY=1, from what they wait on.

pub mod balance;
pub mod bus;
pub mod carry;
pub mod cli;
pub mod config;
pub mod control;
pub mod ebpf;
pub mod envfile;
pub mod error;
pub mod escape;
pub mod generator;
pub mod handover;
pub mod import;
pub mod journal;
pub mod keeper;
pub mod lines;
pub mod listen;
pub mod node;
pub mod nodeipc;
pub mod nofile;
pub mod notify;
pub mod output;
pub mod own_log;
pub mod probe;
pub mod procfs;
pub mod rundir;
pub mod runtime;
pub mod signals;
pub mod spawn;
pub mod supervisor;
pub mod terminal;
pub mod units;
pub mod version;
