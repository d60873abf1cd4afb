"""Several hosts, one provider account, one budget (DESIGN §10): the daemons of a fleet share
their gates, 429 pauses and budgets through one Redis or Valkey.

Imported only when ``[cluster] redis_url`` is set (this package imports the Redis client,
the optional extra ``quotad[cluster]``); with no ``[cluster]`` nothing here runs.

The local engines stay the engines. :class:`~quotad.daemon.gates.Gates` still admits
(synchronously, in ``_dispatch``: queue, priorities, fair share, timers, no polling) and
:class:`~quotad.daemon.store.budgets.Budgets` still reserves; a fleet-backed window's or
budget's capacity is simply what this host *holds* from the fleet, and the traffic with Redis
that keeps it supplied runs beside them, never on the admission path:

========================  ========================================================================
:mod:`.link`              :class:`Link`: the client, scripts, server clock, health (``connecting``
                          → ``resyncing`` → ``connected`` ⇄ ``degraded``), heartbeat, hosts seen,
                          epoch (Redis restarted empty), re-sync and seal
:mod:`.channel`           :class:`FleetChannel`: the fleet's pub/sub channel, listened to while
                          the link is up, its messages delivered to listeners
:mod:`.heartbeat`         a heartbeat's reply, checked: server time, epoch, :class:`HostSeen`
:mod:`.server_time`       :class:`ServerTime`: the server's clock against ours, on the late side
:mod:`.window`            :class:`FleetWindow` (pure): leases borrowed, admissions from them,
                          settle, returns as puts, the ``share``/``closed`` arithmetic when Redis
                          is away
:mod:`.window_records`    what a window keeps: ``Lease``, ``Bucket``, ``OwnAdmission``, ``Taken``
:mod:`.gates`             :class:`FleetGates`: the borrow worker, pauses, provider headers,
                          snapshots, ``freed``/``pause`` messages, re-sync of windows
:mod:`.flusher`           :class:`PutFlusher`: puts (``settle.lua``) and provider observations
                          sent in batches, one call in flight
:mod:`.budgets`           :class:`FleetBudget` (pure: what this host holds) and
                          :class:`FleetBudgets` (borrow, sync, restore after Redis restarted
                          empty)
:mod:`.spend`             :class:`FleetSpend`: spend per day/app/model/target pushed for
                          ``quotad spend --fleet``; :func:`read_fleet_spend`
:mod:`.scripts`           the Lua scripts, one per decision
========================  ========================================================================

How the daemon wires it (phase 2)::

    settings = resolve_settings(config.cluster)         # ConfigError: exit 2
    link = Link(settings, events=event_log.add)
    await link.open()                                   # ClusterAuthError: exit 1;
                                                        # False: serve degraded (closed)
    fleet = FleetGates(link, on_capacity=gates.dispatch, schedule=gates.wake_at,
                       on_pause=gates.set_pause)
    budgets = FleetBudgets(link, local_state=...)       # (spent, reserved) of a local budget
    tasks: link.run, fleet.run, budgets.run

Gates, per cluster-backed :class:`~quotad.daemon.gates.window.SlidingWindow`
(``fleet.window(gate, unit, window_s, limit, window_s + guard_s)`` gives its
:class:`FleetWindow`)::

    fits:     the local checks, and  fleet_window.available(now) >= amount
    admit:    admission.fleet = fleet_window.take(amount, now)       # never None after fits
    resize:   fleet_window.resize(admission.fleet, amount, now); fleet.settle_changed()
    blocked:  fleet.short(Ask(((fleet_window, amount), ...), target)) # one coalesced borrow;
              its answer calls on_capacity() (dispatch) or schedule(when it may fit)
    pause:    local pause, then  await fleet.pause(target, seconds)   # others: on_pause()
    headers:  fleet.observe(fleet_window, remaining, reset_s)

Budgets, per local :class:`~quotad.daemon.store.budgets.Budget`
(``budgets.budget(scope, period, label, limit)``)::

    reserve:  local checks, and  fleet_budget.fits(spent, reserved, max_cost); if not:
              await budgets.borrow([...], max_cost) then reserve (FleetBudgetShort:
              budget_exceeded naming the fleet's figures; LinkDown: refused, this host has
              only what it holds)
    settle:   local settle; budgets.spend.add(day, app, model, target, cost, ...);
              budgets.changed()

Choices (against the coordinator's sketch, CLUSTER.md): budgets are *held* by hosts (per-host
absolute spent and hold, no round trip per request, no key per request id: a replay sets the
same totals), and a vanished host's hold counts until its period ends (a partitioned host may
still spend it); closed admissions go into per-host buckets on a span/256 grid, so a day
window's log stays small; a refused waiter marks its window so other hosts get only what they
need (no slices ahead) while it waits; a lease's deadline runs from when the borrow was
*sent*; after Redis restarted empty hosts push their own state back and borrow nothing for a
short re-sync window; a host that never reached Redis starts serving, closed on fleet limits.

Guarantees (each script's own comment says what it keeps): at no instant do the fleet's
admissions in the last ``window_s + guard_s`` exceed a limit (every local admission is
inside a lease that the fleet's log counts for its whole span); all windows of an ask, and
all budgets of a request, are taken together or not at all; time is the server's (``TIME``);
spent totals are absolute per host, so every replay is idempotent; a Redis restarted empty is
noticed by its epoch and refilled by every host before anyone borrows again.
"""

from __future__ import annotations
