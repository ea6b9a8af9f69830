//! The Lua scripts: each is one atomic step on the server, so that a crash of this process (or
//! of the connection) between two of its commands cannot lose or duplicate a message. Times are
//! the server's (`TIME`), in Unix milliseconds, so that processes with skewed clocks agree on
//! when a retry is due.
//!
//! Keys are passed in `KEYS` (all of a topic's keys share one hash tag). Scripts run in RESP2,
//! where a nil is `false` in Lua.

use std::sync::LazyLock;

use redis::Script;

/// The server's time in milliseconds, as a Lua prelude.
macro_rules! lua {
    ($body:expr) => {
        concat!(
            "local function now_ms() local t = redis.call('TIME') return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) end\n",
            $body
        )
    };
}

/// Creates the group on every partition's stream (`XGROUP CREATE <stream> <group> 0 MKSTREAM`,
/// so that a new group starts at the beginning), leaving existing ones as they are.
///
/// KEYS: the streams. ARGV: group.
pub(crate) static CREATE_GROUPS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for _, stream in ipairs(KEYS) do
  local r = redis.pcall('XGROUP', 'CREATE', stream, ARGV[1], '0', 'MKSTREAM')
  if type(r) == 'table' and r.err and not string.find(r.err, 'BUSYGROUP', 1, true) then
    return redis.error_reply(r.err)
  end
end
return #KEYS
",
    )
});

/// Moves a delivered message from the pending entries list to the retry set: `XACK`, then the
/// retry due at now + delay, its attempt count, and the key's block — or nothing, when the
/// message is no longer pending (acked meanwhile by a member that took it over). Returns the due
/// time, or -1.
///
/// KEYS: stream, retry, attempts, blocked. ARGV: group, id, member, delay ms, attempt, key.
pub(crate) static NACK_PENDING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(lua!(
        r"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return -1 end
local due = now_ms() + tonumber(ARGV[4])
redis.call('ZADD', KEYS[2], due, ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
redis.call('HSET', KEYS[4], ARGV[6], ARGV[3])
return due
"
    ))
});

/// Puts a retried message back into the retry set, due at now + delay, with its attempt count —
/// or nothing, when it is no longer there (acked meanwhile). Returns the due time, or -1.
///
/// KEYS: retry, attempts. ARGV: member, delay ms, attempt.
pub(crate) static NACK_RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(lua!(
        r"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return -1 end
local due = now_ms() + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], due, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return due
"
    ))
});

/// Settles a retried message: out of the retry set, its attempt count gone, its key unblocked
/// (if this message is what blocks it).
///
/// KEYS: retry, attempts, blocked. ARGV: member, key.
pub(crate) static ACK_RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[3], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[3], ARGV[2]) end
return removed
",
    )
});

/// Takes the due retries (at most ARGV[2]): each one's lease is set to now + lease, its attempt
/// count raised by one, and its entry read from its stream. An entry that is gone from its
/// stream (trimmed) is dropped from the retry set. Returns `{now, next score or -1, {member,
/// attempt, fields, ...}}`, the next score saying when to look again.
///
/// KEYS: retry, attempts, the streams by partition. ARGV: lease ms, limit.
pub(crate) static TAKE_DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(lua!(
        r"
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, member in ipairs(due) do
  local partition, id = string.match(member, '^(%d+):(.+)$')
  local stream = partition and KEYS[3 + tonumber(partition)]
  if stream then
    local found = redis.call('XRANGE', stream, id, id)
    if #found == 1 then
      redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), member)
      local attempt = redis.call('HINCRBY', KEYS[2], member, 1)
      table.insert(out, member)
      table.insert(out, attempt)
      table.insert(out, found[1][2])
    else
      redis.call('ZREM', KEYS[1], member)
      redis.call('HDEL', KEYS[2], member)
    end
  end
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {now, next[2] or -1, out}
"
    ))
});

/// Extends the leases of retried messages this process holds (only those still in the retry
/// set, and never shortening one). Returns nothing.
///
/// KEYS: retry. ARGV: lease ms, members.
pub(crate) static RENEW_LEASES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(lua!(
        r"
local until_ms = now_ms() + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', 'GT', until_ms, ARGV[i]) end
return #ARGV - 1
"
    ))
});

/// The keys blocked by a waiting retry, with the retry's score: what a member starting up must
/// hold back. Stale blocks (their retry is gone) are cleaned up. Returns `{now, {key, member,
/// score, ...}}`.
///
/// KEYS: blocked, retry.
pub(crate) static LOAD_BLOCKED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(lua!(
        r"
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local score = redis.call('ZSCORE', KEYS[2], all[i + 1])
  if score then
    table.insert(out, all[i])
    table.insert(out, all[i + 1])
    table.insert(out, score)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return {now_ms(), out}
"
    ))
});

/// This consumer's own pending entries from `ARGV[3]` on (at most `ARGV[4]`): what an earlier
/// incarnation of the consumer had not settled. Each is claimed again (which resets its idle
/// time and counts a delivery). Returns `{last id or false, {{id, attempt, fields}, ...}}`.
///
/// KEYS: stream. ARGV: group, consumer, start (`-` or `(<id>`), count.
pub(crate) static OWN_PENDING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], '+', tonumber(ARGV[4]), ARGV[2])
if type(pending) ~= 'table' or pending.err or #pending == 0 then return {false, {}} end
local ids, counts = {}, {}
for i, p in ipairs(pending) do
  ids[i] = p[1]
  counts[p[1]] = p[4]
end
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))
local out = {}
for _, e in ipairs(claimed) do
  if e and e[2] then table.insert(out, {e[1], counts[e[1]] + 1, e[2]}) end
end
return {ids[#ids], out}
",
    )
});

/// Takes over entries of other consumers idle for at least `ARGV[3]` ms, with their delivery
/// counts and — for each key with a waiting retry — the retry's member and score, so that the
/// taken entries do not overtake it. Each stream's pending entries list is scanned from its start
/// (`XAUTOCLAIM` pages of `ARGV[4]`, inside this one atomic script) until its end or until
/// `ARGV[5]` entries were taken: always a prefix, so that a key's earlier entries are never left
/// for a later pass while its later ones are taken. Streams whose group is gone are skipped.
/// Returns `{now, {{partition, id, attempt, fields, member or false, score or false}, ...}}`.
///
/// KEYS: blocked, retry, the streams by partition. ARGV: group, consumer, min idle ms, page,
/// most entries per stream.
pub(crate) static AUTOCLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(lua!(
        r"
local out = {}
local page, most = tonumber(ARGV[4]), tonumber(ARGV[5])
for k = 3, #KEYS do
  local cursor, taken = '0-0', 0
  repeat
    local r = redis.pcall('XAUTOCLAIM', KEYS[k], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', page)
    if type(r) ~= 'table' or r.err then break end
    cursor = r[1]
    for _, e in ipairs(r[2]) do
      if e and e[2] then
        taken = taken + 1
        local p = redis.call('XPENDING', KEYS[k], ARGV[1], e[1], e[1], 1)
        local attempt = (p[1] and p[1][4]) or 1
        local member, score = false, false
        for i = 1, #e[2], 2 do
          if e[2][i] == 'key' then
            member = redis.call('HGET', KEYS[1], e[2][i + 1])
            if member then score = redis.call('ZSCORE', KEYS[2], member) end
            if not score then member = false end
          end
        end
        table.insert(out, {k - 3, e[1], attempt, e[2], member, score})
      end
    end
  until cursor == '0-0' or taken >= most
end
return {now_ms(), out}
"
    ))
});

/// Deletes the group's consumers (other than `ARGV[2]`) that have nothing pending and were idle
/// for more than `ARGV[3]` ms: the names of processes gone for good. Returns how many.
///
/// KEYS: the streams. ARGV: group, consumer, idle ms.
pub(crate) static FORGET_CONSUMERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local forgotten = 0
for _, stream in ipairs(KEYS) do
  local consumers = redis.pcall('XINFO', 'CONSUMERS', stream, ARGV[1])
  if type(consumers) == 'table' and not consumers.err then
    for _, c in ipairs(consumers) do
      local f = {}
      for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
      if f.name ~= ARGV[2] and f.pending == 0 and f.idle > tonumber(ARGV[3]) then
        redis.call('XGROUP', 'DELCONSUMER', stream, ARGV[1], f.name)
        forgotten = forgotten + 1
      end
    end
  end
end
return forgotten
",
    )
});

/// What `group` has not settled on a topic: per stream, Redis's `lag` (entries never delivered
/// to the group; the stream's length when Redis cannot tell) plus `pending` (delivered, not
/// acked), or the stream's length when the group never read it; plus the retry set. A stream
/// that does not exist counts nothing, and nothing is created.
///
/// KEYS: retry, the streams. ARGV: group.
pub(crate) static LAG: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local total = redis.call('ZCARD', KEYS[1])
for k = 2, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 1 then
    local found = false
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[k])) do
      local f = {}
      for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
      if f.name == ARGV[1] then
        found = true
        local lag = f.lag
        if type(lag) ~= 'number' then lag = redis.call('XLEN', KEYS[k]) end
        total = total + lag + f.pending
      end
    end
    if not found then total = total + redis.call('XLEN', KEYS[k]) end
  end
end
return total
",
    )
});
