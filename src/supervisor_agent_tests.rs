//! The agent's decisions (supervisor_agent.rs), with the fake clock. The harness checks after
//! every step that there is never more than one agent process.

use super::*;

/// An app of `workers` workers and an agent whose config is `key`.
fn app(workers: u32, key: u64) -> P {
    P::new(workers).agent(P::new(1), key)
}

/// Started: the agent ready, then every worker ready.
fn running(p: P) -> Harness {
    let mut h = Harness::start(p);
    let agent = h.agent_of(1);
    h.ready(agent);
    for (id, _, _) in h.spawns.clone() {
        h.ready(id);
    }
    check_eq!(h, h.snap().state, "running");
    h
}

fn agent_state(h: &Harness) -> Option<(&'static str, u32)> {
    h.snap().agent.map(|a| (a.state, a.generation))
}

#[test]
fn the_agent_starts_first_and_the_workers_once_it_is_ready() {
    let mut h = Harness::start(app(3, 1));
    check_eq!(h, h.agents.len(), 1, "the agent is spawned");
    check_eq!(
        h,
        h.spawned_since(0),
        vec![],
        "no worker before the agent is ready"
    );
    check_eq!(h, agent_state(&h), Some(("starting", 1)));
    let agent = h.agent_of(1);
    let mark = h.mark();
    h.ready(agent);
    check_eq!(h, h.spawned_since(mark), vec![(0, 1), (1, 1), (2, 1)]);
    for s in 0..3 {
        let id = h.last_spawn(s);
        h.ready(id);
    }
    check_eq!(h, h.systemd(), vec![Systemd::Ready], "ready once all are");
    check_eq!(h, agent_state(&h), Some(("ready", 1)));
}

#[test]
fn workers_that_do_not_wait_start_beside_the_agent_but_the_app_is_ready_only_with_it() {
    let mut h = Harness::start(app(2, 1).agent_no_wait());
    check_eq!(h, h.spawned_since(0), vec![(0, 1), (1, 1)]);
    for s in 0..2 {
        let id = h.last_spawn(s);
        h.ready(id);
    }
    check_eq!(h, h.systemd(), vec![], "no READY=1 while the agent starts");
    check!(h, h.status().contains("agent starting"), "{}", h.status());
    let agent = h.agent_of(1);
    h.ready(agent);
    check_eq!(h, h.systemd(), vec![Systemd::Ready]);
}

#[test]
fn a_crashed_agent_is_restarted_with_backoff_while_the_workers_serve_on() {
    let mut h = running(app(2, 1));
    let workers: Vec<WorkerId> = (0..2).map(|s| h.serving(s)).collect();
    let first = h.agent_of(1);
    h.exit(first, 1);
    check_eq!(h, agent_state(&h), Some(("backoff", 1)));
    check_eq!(h, h.agents.len(), 1, "not before its delay");
    h.advance(ms(100));
    check_eq!(h, h.agents.len(), 2, "again after restart.delay");
    let second = h.agent_of(1);
    h.exit(second, 1);
    h.advance(ms(100));
    check_eq!(h, h.agents.len(), 2, "the delay doubles");
    h.advance(ms(100));
    check_eq!(h, h.agents.len(), 3);
    for id in workers {
        check_eq!(h, h.signals(id), vec![], "workers are left alone");
    }
    check_eq!(h, h.snap().ready, 2);
    check_eq!(h, h.snap().agent.map(|a| a.restarts), Some(2));
}

#[test]
fn an_agent_in_a_crash_loop_ends_the_app() {
    let mut h = running(P::new(1).agent(P::new(1).max_failures(3, secs(60)), 1));
    for _ in 0..3 {
        let id = *h.agents.last().map(|(id, _)| id).unwrap();
        h.exit(id, 1);
        h.advance(secs(1));
    }
    let worker = h.spawn_of(0, 1);
    check_eq!(h, h.signals(worker), vec![Signal::SIGTERM], "the app stops");
    h.exit(worker, 0);
    check_eq!(h, h.exit_code(), Some(1));
}

#[test]
fn an_agent_that_cannot_be_executed_at_start_ends_the_app() {
    let mut h = Harness::new();
    h.fail_agent_spawn(1, "No such file or directory");
    h.step(Event::Start {
        params: app(2, 1).into(),
    });
    check_eq!(h, h.spawned_since(0), vec![], "no worker");
    check_eq!(h, h.exit_code(), Some(1));
}

#[test]
fn at_a_stop_the_workers_go_first_and_the_agent_last() {
    let mut h = running(app(2, 1));
    let agent = h.agent_of(1);
    let workers: Vec<WorkerId> = (0..2).map(|s| h.serving(s)).collect();
    h.stop();
    for &id in &workers {
        check_eq!(h, h.signals(id), vec![Signal::SIGTERM]);
    }
    check_eq!(h, h.signals(agent), vec![], "not while workers run");
    h.exit(workers[0], 0);
    check_eq!(h, h.signals(agent), vec![]);
    h.exit(workers[1], 0);
    check_eq!(
        h,
        h.signals(agent),
        vec![Signal::SIGTERM],
        "once they are gone"
    );
    check_eq!(h, h.exit_code(), None);
    h.exit(agent, 0);
    check_eq!(h, h.exit_code(), Some(0));
}

#[test]
fn a_reload_that_keeps_the_agent_leaves_it_running_in_the_new_generation() {
    let mut h = running(app(2, 7));
    let agent = h.agent_of(1);
    h.roll(2, app(2, 7), Scope::All, Some(1));
    for s in 0..2 {
        let id = h.spawn_of(s, 2);
        h.ready(id);
        let old = h.spawn_of(s, 1);
        h.exit(old, 0);
    }
    check!(h, matches!(h.reply(1), Some(Ok(_))), "{:?}", h.reply(1));
    check_eq!(h, h.signals(agent), vec![], "never stopped");
    check_eq!(h, h.agents.len(), 1);
    check_eq!(h, agent_state(&h), Some(("ready", 2)));
    check!(h, h.forgotten().contains(&1), "generation 1 is let go");
}

#[test]
fn a_reload_that_changes_the_agent_replaces_it_before_the_workers_roll() {
    let mut h = running(app(2, 1));
    let old = h.agent_of(1);
    let mark = h.mark();
    h.roll(2, app(2, 2), Scope::All, Some(1));
    check_eq!(
        h,
        h.signals(old),
        vec![Signal::SIGTERM],
        "the old agent stops first"
    );
    check_eq!(h, h.agents.len(), 1, "and the new one waits for it");
    check_eq!(h, h.spawned_since(mark), vec![], "no worker yet");
    h.exit(old, 0);
    let new = h.agent_of(2);
    check_eq!(
        h,
        h.spawned_since(mark),
        vec![],
        "not until the new agent is ready"
    );
    h.ready(new);
    check_eq!(
        h,
        h.spawned_since(mark),
        vec![(0, 2)],
        "then the workers roll"
    );
    for s in 0..2 {
        let id = h.spawn_of(s, 2);
        h.ready(id);
        let o = h.spawn_of(s, 1);
        h.exit(o, 0);
    }
    check!(h, matches!(h.reply(1), Some(Ok(_))), "{:?}", h.reply(1));
    check_eq!(h, agent_state(&h), Some(("ready", 2)));
}

#[test]
fn a_new_agent_that_is_not_ready_fails_the_reload_and_the_old_one_comes_back() {
    let mut h = running(app(2, 1));
    let old = h.agent_of(1);
    let workers: Vec<WorkerId> = (0..2).map(|s| h.serving(s)).collect();
    let mark = h.mark();
    h.roll(2, app(2, 2), Scope::All, Some(1));
    h.exit(old, 0);
    let new = h.agent_of(2);
    h.advance(secs(5));
    check_eq!(
        h,
        h.signals(new),
        vec![Signal::SIGKILL],
        "not ready within its timeout"
    );
    h.killed(new, Signal::SIGKILL);
    let reply = h.reply(1);
    check!(
        h,
        matches!(&reply, Some(Err(e)) if e.contains("agent")),
        "{reply:?}"
    );
    check_eq!(h, h.spawned_since(mark), vec![], "the workers never rolled");
    let back = h.agent_of(1);
    check!(
        h,
        back != old,
        "the old generation's agent is started again"
    );
    h.ready(back);
    check_eq!(h, agent_state(&h), Some(("ready", 1)));
    for id in workers {
        check_eq!(h, h.signals(id), vec![]);
    }
    check_eq!(h, h.snap().generation, 1);
}

#[test]
fn restart_agent_replaces_the_agent_alone() {
    let mut h = running(app(2, 1));
    let old = h.agent_of(1);
    let mark = h.mark();
    h.roll(2, app(2, 1), Scope::Agent, Some(1));
    check_eq!(h, h.signals(old), vec![Signal::SIGTERM]);
    h.exit(old, 0);
    let new = h.agent_of(2);
    h.ready(new);
    check!(h, matches!(h.reply(1), Some(Ok(_))), "{:?}", h.reply(1));
    check_eq!(h, h.spawned_since(mark), vec![], "no worker replaced");

    let mut plain = Harness::started(P::new(1));
    plain.roll(2, P::new(1), Scope::Agent, Some(2));
    let reply = plain.reply(2);
    check!(
        plain,
        matches!(&reply, Some(Err(e)) if e.contains("no agent")),
        "{reply:?}"
    );
}

#[test]
fn a_reload_without_an_agent_stops_it_once_the_workers_rolled() {
    let mut h = running(app(1, 1));
    let agent = h.agent_of(1);
    h.roll(2, P::new(1), Scope::All, Some(1));
    check_eq!(
        h,
        h.signals(agent),
        vec![],
        "not while the roll may still fail"
    );
    let new = h.spawn_of(0, 2);
    h.ready(new);
    let old = h.spawn_of(0, 1);
    h.exit(old, 0);
    check_eq!(h, h.signals(agent), vec![Signal::SIGTERM]);
    h.exit(agent, 0);
    check_eq!(h, h.snap().agent.is_none(), true);
    check_eq!(h, h.agents.len(), 1, "not started again");
}

#[test]
fn a_reload_that_adds_an_agent_starts_it_before_the_workers_roll() {
    let mut h = Harness::started(P::new(1));
    let mark = h.mark();
    h.roll(2, app(1, 1), Scope::All, Some(1));
    let agent = h.agent_of(2);
    check_eq!(h, h.spawned_since(mark), vec![]);
    h.ready(agent);
    check_eq!(h, h.spawned_since(mark), vec![(0, 2)]);
}

#[test]
fn a_stop_during_an_agent_swap_starts_no_new_agent() {
    let mut h = running(app(1, 1));
    let old = h.agent_of(1);
    h.roll(2, app(1, 2), Scope::All, Some(1));
    h.stop();
    let worker = h.spawn_of(0, 1);
    h.exit(worker, 0);
    h.exit(old, 0);
    check_eq!(h, h.agents.len(), 1);
    check_eq!(h, h.exit_code(), Some(0));
}

#[test]
fn a_reload_that_brings_the_agent_back_while_the_removed_one_stops_keeps_exactly_one() {
    let mut h = running(app(1, 1));
    let first = h.agent_of(1);
    // Generation 2 has no agent: the agent goes once the worker rolled.
    h.roll(2, P::new(1), Scope::All, Some(1));
    let w = h.spawn_of(0, 2);
    h.ready(w);
    let old = h.spawn_of(0, 1);
    h.exit(old, 0);
    check_eq!(h, h.signals(first), vec![Signal::SIGTERM]);
    // Generation 3 has the same agent again, before the first one is gone.
    h.roll(3, app(1, 1), Scope::All, Some(2));
    h.exit(first, 0);
    let back = h.agent_of(3);
    h.ready(back);
    let w = h.spawn_of(0, 3);
    h.ready(w);
    let old = h.spawn_of(0, 2);
    h.exit(old, 0);
    check!(h, matches!(h.reply(2), Some(Ok(_))), "{:?}", h.reply(2));
    check_eq!(h, agent_state(&h), Some(("ready", 3)));
    check_eq!(h, h.agents.len(), 2);
}

#[test]
fn a_reload_that_fails_after_the_agent_was_replaced_puts_the_old_agent_back() {
    let mut h = running(app(1, 1));
    let old = h.agent_of(1);
    h.roll(2, app(1, 2), Scope::All, Some(1));
    h.exit(old, 0);
    let new = h.agent_of(2);
    h.ready(new);
    // The agent is replaced; then the new generation's worker is never ready.
    let w = h.spawn_of(0, 2);
    h.advance(secs(5));
    h.killed(w, Signal::SIGKILL);
    check_eq!(
        h,
        h.signals(new),
        vec![Signal::SIGTERM],
        "the new agent goes"
    );
    h.exit(new, 0);
    let back = h.agent_of(1);
    check!(h, back != old);
    h.ready(back);
    let reply = h.reply(1);
    check!(h, matches!(&reply, Some(Err(_))), "{reply:?}");
    check_eq!(h, agent_state(&h), Some(("ready", 1)));
    check_eq!(h, h.snap().generation, 1);
}

#[test]
fn nothing_starts_workers_before_the_agents_first_readiness() {
    let mut h = Harness::start(app(1, 1));
    h.scale(3, Some(1));
    h.roll(2, app(3, 1), Scope::All, Some(2));
    check_eq!(
        h,
        h.spawned_since(0),
        vec![],
        "scale and a reload wait for the agent"
    );
    let agent = h.agent_of(1);
    h.ready(agent);
    // Then the three slots, and the reload's first replacement.
    check_eq!(h, h.spawned_since(0), vec![(0, 1), (1, 1), (2, 1), (0, 2)]);
}

#[test]
fn the_bus_reaches_the_agent_each_slot_and_every_worker_but_none_that_stops() {
    use crate::bus::To;
    let mut h = running(app(2, 1));
    let agent = h.agent_of(1);
    let (w0, w1) = (h.serving(0), h.serving(1));
    let pids = |h: &Harness, to| -> Vec<i32> {
        let mut v: Vec<i32> = h.sup.bus_targets(to).into_iter().map(|(_, p)| p).collect();
        v.sort();
        v
    };
    check_eq!(h, pids(&h, To::Agent), vec![h.pid(agent)]);
    check_eq!(h, pids(&h, To::Slot(1)), vec![h.pid(w1)]);
    check_eq!(h, pids(&h, To::All), vec![h.pid(w0), h.pid(w1)]);
    check_eq!(
        h,
        pids(&h, To::Any),
        vec![h.pid(w0), h.pid(w1)],
        "the ready ones"
    );
    check_eq!(h, pids(&h, To::Slot(2)), Vec::<i32>::new(), "no slot 2");
    check_eq!(h, h.sup.seat_of(agent), Some(Seat::Agent));
    // During a roll: the new worker of slot 0 is reached, the old one once it stops no more.
    h.roll(2, app(2, 1), Scope::All, None);
    let n0 = h.spawn_of(0, 2);
    check_eq!(
        h,
        pids(&h, To::Slot(0)),
        vec![h.pid(n0)],
        "the newest, not yet ready"
    );
    check_eq!(
        h,
        pids(&h, To::Pid(h.pid(w0))),
        vec![h.pid(w0)],
        "the old one by its pid"
    );
    check_eq!(h, pids(&h, To::Pid(h.pid(agent))), vec![h.pid(agent)]);
    h.ready(n0);
    check_eq!(h, pids(&h, To::Slot(0)), vec![h.pid(n0)]);
    // w0 stops; slot 1's new worker starts and is reached too.
    let n1 = h.spawn_of(1, 2);
    check_eq!(h, pids(&h, To::All), vec![h.pid(w1), h.pid(n0), h.pid(n1)]);
    // "any": only those ready, the starting n1 and the stopping w0 not (the router falls back
    // to "all" while none is).
    let mut any = vec![h.pid(w1), h.pid(n0)];
    any.sort();
    check_eq!(h, pids(&h, To::Any), any);
}
