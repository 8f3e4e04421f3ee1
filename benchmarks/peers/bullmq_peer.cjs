// Measures BullMQ the way benchmarks/peers/driver.py measures the Python peers.
//
//   NODE_PATH=benchmarks/.peers/bullmq/node_modules node benchmarks/peers/bullmq_peer.cjs \
//       --redis redis://127.0.0.1:PORT/DB --concurrency 50 --jobs 20000 --measure drain,latency
//
// The BullMQ Worker runs in a worker thread (its own event loop, on another core if free);
// the main thread enqueues. The processor records, in shared memory, when the first job
// started, when the last one ended, and each latency job's start: no Redis call per job.
// Prints its result as one line, `RESULT {json}`, on stdout. BullMQ's defaults otherwise
// (completed jobs are kept). With `--task sleep` each drained job awaits a 100 ms timer
// (the I/O job of bench.py's concurrency phase) and records its span.
"use strict";

const { Worker: Thread, isMainThread, workerData, parentPort } = require("node:worker_threads");
const { Queue, Worker } = require("bullmq");
const IORedis = require("ioredis");

const QUEUE = "bench";
const FIRST = 0, LAST = 1, COUNT = 2, READY = 3;
const SLEEP_MS = 100; // what a `sleep` job waits
const now = () => performance.timeOrigin + performance.now(); // epoch ms, sub-ms precision

function connection(url) {
  const parsed = new URL(url);
  const db = Number(parsed.pathname.slice(1) || 0);
  return { host: parsed.hostname, port: Number(parsed.port), db, maxRetriesPerRequest: null };
}

// --- the worker thread ----------------------------------------------------------------------

async function runWorker() {
  const { url, concurrency, stats, latency } = workerData;
  const slot = new Float64Array(stats);
  const lat = new Float64Array(latency);
  const sleeper = async (job) => {
    const start = now();
    await sleep(SLEEP_MS);
    if (slot[COUNT] === 0 || start < slot[FIRST]) slot[FIRST] = start;
    slot[COUNT] += 1;
    slot[LAST] = Math.max(slot[LAST], now());
  };
  const processor = async (job) => {
    if (job.name === "sleep") return sleeper(job);
    const start = now();
    if (slot[COUNT] === 0) slot[FIRST] = start;
    if (job.data.i !== undefined) lat[job.data.i] = start - job.data.t;
    slot[COUNT] += 1;
    slot[LAST] = now();
  };
  const worker = new Worker(QUEUE, processor, { connection: connection(url), concurrency });
  await worker.waitUntilReady();
  slot[READY] = 1;
  parentPort.on("message", async (message) => {
    if (message === "stop") {
      await worker.close();
      parentPort.postMessage({ rss: process.memoryUsage().rss });
    }
  });
}

// --- the main thread ------------------------------------------------------------------------

function parseArgs(argv) {
  const args = {
    concurrency: 1, jobs: 20000, rate: 200, duration: 10, measure: "drain,latency", task: "noop",
  };
  const strings = ["redis", "measure", "task"];
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    args[key] = strings.includes(key) ? argv[i + 1] : Number(argv[i + 1]);
  }
  return args;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function redisSample(client) {
  const cpu = await client.info("cpu");
  const user = Number(/used_cpu_user:([\d.]+)/.exec(cpu)[1]);
  const sys = Number(/used_cpu_sys:([\d.]+)/.exec(cpu)[1]);
  const stats = await client.info("commandstats");
  const calls = {};
  for (const m of stats.matchAll(/cmdstat_(\w+(?:\|\w+)?):calls=(\d+)/g)) calls[m[1]] = Number(m[2]);
  return { cpu: user + sys, calls };
}

function commandsBetween(before, after) {
  let total = 0;
  for (const [name, n] of Object.entries(after.calls)) {
    if (name !== "info") total += n - (before.calls[name] || 0);
  }
  return total;
}

function percentile(ordered, p) {
  const rank = Math.max(1, Math.ceil((p / 100) * ordered.length));
  return ordered[Math.min(rank, ordered.length) - 1];
}

class Run {
  constructor(args, queue, client) {
    this.args = args;
    this.queue = queue;
    this.client = client;
  }

  async startWorker(latencyJobs) {
    this.stats = new SharedArrayBuffer(4 * 8);
    this.latency = new SharedArrayBuffer(Math.max(1, latencyJobs) * 8);
    this.slot = new Float64Array(this.stats);
    const data = {
      url: this.args.redis,
      concurrency: this.args.concurrency,
      stats: this.stats,
      latency: this.latency,
    };
    this.thread = new Thread(__filename, { workerData: data });
    this.thread.on("error", (error) => {
      console.error(error);
      process.exit(1);
    });
    const deadline = Date.now() + 60000;
    while (this.slot[READY] !== 1) {
      if (Date.now() > deadline) throw new Error("the BullMQ worker did not start");
      await sleep(20);
    }
  }

  async stopWorker() {
    const reply = new Promise((resolve) => this.thread.once("message", resolve));
    this.thread.postMessage("stop");
    const { rss } = await reply;
    await this.thread.terminate();
    return Math.round(rss / 1024);
  }

  async waitCount(total, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    while (this.slot[COUNT] < total) {
      if (Date.now() > deadline) throw new Error(`${this.slot[COUNT]} of ${total} jobs done`);
      await sleep(10);
    }
    return now();
  }

  async drain(n) {
    await this.queue.pause(); // jobs wait until every worker is consuming
    let started = now();
    for (let i = 0; i < n; i++) await this.queue.add(this.args.task, {});
    const enqueueRate = n / ((now() - started) / 1000);
    await this.startWorker(0);
    const before = await redisSample(this.client);
    const released = now();
    await this.queue.resume();
    const done = await this.waitCount(n, Math.max(120000, n * 10));
    const after = await redisSample(this.client);
    const rss = await this.stopWorker();
    const span = (this.slot[LAST] - this.slot[FIRST]) / 1000;
    return {
      jobs: n,
      span,
      rate: n / span,
      wall: (done - released) / 1000,
      enqueue_rate: enqueueRate,
      redis_us: ((after.cpu - before.cpu) / n) * 1e6,
      redis_commands: commandsBetween(before, after) / n,
      rss_kib: [rss],
    };
  }

  async bulk(n) {
    const chunk = Array.from({ length: 1000 }, () => ({ name: "noop", data: {} }));
    await this.queue.addBulk(chunk); // warm-up
    await this.client.flushdb();
    const started = now();
    for (let done = 0; done < n; done += chunk.length) await this.queue.addBulk(chunk);
    return { jobs: n, rate: n / ((now() - started) / 1000), per_call: chunk.length };
  }

  async latencyRun(rate, seconds) {
    const total = Math.floor(rate * (seconds + 1));
    const warmup = Math.floor(rate);
    await this.startWorker(total);
    const pending = [];
    let lag = 0;
    const start = now() + 50;
    for (let i = 0; i < total; i++) {
      const scheduled = start + (i * 1000) / rate;
      const delay = scheduled - now();
      if (delay > 0) await sleep(delay);
      if (i >= warmup) lag = Math.max(lag, now() - scheduled);
      pending.push(this.queue.add("noop", { i, t: scheduled }));
    }
    await Promise.all(pending);
    await this.waitCount(total, 60000 + total * 50);
    await this.stopWorker();
    const lat = new Float64Array(this.latency);
    const ms = Array.from(lat.slice(warmup, total)).sort((a, b) => a - b);
    return {
      jobs: ms.length,
      p50: percentile(ms, 50),
      p90: percentile(ms, 90),
      p99: percentile(ms, 99),
      max: ms[ms.length - 1],
      lag_ms: lag,
    };
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const queue = new Queue(QUEUE, { connection: connection(args.redis) });
  const client = new IORedis(connection(args.redis)); // INFO and FLUSHDB: our own calls
  const run = new Run(args, queue, client);
  const version = require("bullmq/package.json").version;
  const result = { peer: "bullmq", description: `concurrency ${args.concurrency}`, version };
  for (const name of args.measure.split(",")) {
    await client.flushdb();
    if (name === "drain") result.drain = await run.drain(args.jobs);
    else if (name === "bulk") result.bulk = await run.bulk(args.jobs);
    else if (name === "latency") result.latency = await run.latencyRun(args.rate, args.duration);
  }
  await queue.close();
  client.disconnect();
  console.log("RESULT " + JSON.stringify(result));
}

if (isMainThread) {
  main().then(
    () => process.exit(0),
    (error) => {
      console.error(error);
      process.exit(1);
    },
  );
} else {
  runWorker();
}
