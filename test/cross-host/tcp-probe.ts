import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { type AddressInfo, createServer, connect as netConnect, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { parseHostPort } from './delay-relay.js';

/**
 * Small network probes to run inside a namespace (`ip netns exec NS node tcp-probe.js MODE ...`),
 * each printing one JSON line on stdout:
 *
 *   echo    --listen H:P                 echo server; prints {"msg":"listening","port"}
 *   sink    --listen H:P                 counts each connection's bytes up to its FIN, answers
 *                                        the count (8 bytes), closes; prints {"msg":"listening"}
 *   connect --target H:P [--timeout-ms]  {"ok":true} or {"ok":false,"code":"ECONNREFUSED"}
 *   rtt     --target H:P [--count N]     1-byte round trips to an echo server: {"medianUs",...}
 *   echo-check --target H:P --bytes N    N random bytes through an echo server and back:
 *                                        {"isIntact":bool,"ms"}
 *   send    --target H:P --bytes N       N bytes to a sink, timed to its answer: {"bytes","ms"}
 *   http-get --url URL                   {"status","body"}
 */

const CHUNK_BYTES = 1024 * 1024;

type Mode = 'echo' | 'sink' | 'connect' | 'rtt' | 'echo-check' | 'send' | 'http-get';

interface ProbeArgs {
  readonly listen?: string;
  readonly target?: string;
  readonly count: number;
  readonly bytes: number;
  readonly timeoutMs: number;
  readonly url?: string;
}

function print(record: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

async function listen(text: string, onSocket: (socket: Socket) => void): Promise<void> {
  const { host, port } = parseHostPort(text);
  const server = createServer({ allowHalfOpen: true, noDelay: true }, onSocket);
  server.listen({ host, port });
  await once(server, 'listening');
  print({ msg: 'listening', port: (server.address() as AddressInfo).port });
}

function serveEcho(socket: Socket): void {
  socket.on('error', () => socket.destroy());
  socket.pipe(socket);
}

function serveSink(socket: Socket): void {
  let count = 0;
  socket.on('error', () => socket.destroy());
  socket.on('data', (chunk: Buffer) => {
    count += chunk.length;
  });
  socket.once('end', () => {
    const answer = Buffer.alloc(8);
    answer.writeBigUInt64BE(BigInt(count));
    socket.end(answer);
  });
}

async function connectTo(text: string, timeoutMs: number): Promise<Socket> {
  const { host, port } = parseHostPort(text);
  const socket = netConnect({ host, port, noDelay: true, allowHalfOpen: true });
  const timer = setTimeout(
    () => socket.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })),
    timeoutMs,
  );
  try {
    await once(socket, 'connect');
  } finally {
    clearTimeout(timer);
  }
  return socket;
}

/** Reads at least `length` bytes and resolves with them (rejects on end or error first). */
function readExactly(socket: Socket, length: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let have = 0;
    const cleanup = (): void => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', reject);
      socket.pause();
    };
    const onData = (chunk: Buffer): void => {
      parts.push(chunk);
      have += chunk.length;
      if (have < length) return;
      cleanup();
      resolve(Buffer.concat(parts));
    };
    const onEnd = (): void => {
      cleanup();
      reject(new Error(`connection ended after ${have} of ${length} bytes`));
    };
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('error', reject);
    socket.resume();
  });
}

async function measureRtt(args: ProbeArgs): Promise<void> {
  const socket = await connectTo(args.target ?? '', args.timeoutMs);
  const samplesUs: number[] = [];
  for (let i = 0; i < args.count; i += 1) {
    const startedNs = process.hrtime.bigint();
    socket.write(Buffer.of(i & 0xff));
    await readExactly(socket, 1);
    samplesUs.push(Number(process.hrtime.bigint() - startedNs) / 1000);
  }
  socket.destroy();
  samplesUs.sort((x, y) => x - y);
  const medianUs = samplesUs[Math.floor(samplesUs.length / 2)] ?? Number.NaN;
  print({ medianUs, minUs: samplesUs[0], maxUs: samplesUs[samplesUs.length - 1] });
}

async function echoCheck(args: ProbeArgs): Promise<void> {
  const socket = await connectTo(args.target ?? '', args.timeoutMs);
  const data = randomBytes(args.bytes);
  const startedMs = performance.now();
  const received = readExactly(socket, data.length);
  socket.end(data);
  const back = (await received).subarray(0, data.length);
  const ms = performance.now() - startedMs;
  socket.destroy();
  const hash = (buffer: Buffer): string => createHash('sha256').update(buffer).digest('hex');
  print({ isIntact: hash(back) === hash(data), ms });
}

async function send(args: ProbeArgs): Promise<void> {
  const socket = await connectTo(args.target ?? '', args.timeoutMs);
  const chunk = randomBytes(CHUNK_BYTES);
  const startedMs = performance.now();
  const answer = readExactly(socket, 8);
  for (let sent = 0; sent < args.bytes; sent += chunk.length) {
    const length = Math.min(chunk.length, args.bytes - sent);
    if (!socket.write(length === chunk.length ? chunk : chunk.subarray(0, length))) {
      await once(socket, 'drain');
    }
  }
  socket.end();
  const counted = Number((await answer).readBigUInt64BE(0));
  const ms = performance.now() - startedMs;
  socket.destroy();
  if (counted !== args.bytes) throw new Error(`sink counted ${counted} of ${args.bytes} bytes`);
  print({ bytes: args.bytes, ms });
}

async function tryConnect(args: ProbeArgs): Promise<void> {
  try {
    const socket = await connectTo(args.target ?? '', args.timeoutMs);
    socket.destroy();
    print({ ok: true });
  } catch (error) {
    print({ ok: false, code: (error as NodeJS.ErrnoException).code ?? String(error) });
  }
}

async function httpGet(args: ProbeArgs): Promise<void> {
  const response = await fetch(args.url ?? '', { signal: AbortSignal.timeout(args.timeoutMs) });
  print({ status: response.status, body: await response.text() });
}

async function main(argv: string[]): Promise<void> {
  const [mode, ...rest] = argv;
  const { values } = parseArgs({
    args: rest,
    options: {
      listen: { type: 'string' },
      target: { type: 'string' },
      url: { type: 'string' },
      count: { type: 'string', default: '50' },
      bytes: { type: 'string', default: String(CHUNK_BYTES) },
      'timeout-ms': { type: 'string', default: '5000' },
    },
  });
  const args: ProbeArgs = {
    ...(values.listen === undefined ? {} : { listen: values.listen }),
    ...(values.target === undefined ? {} : { target: values.target }),
    ...(values.url === undefined ? {} : { url: values.url }),
    count: Number(values.count),
    bytes: Number(values.bytes),
    timeoutMs: Number(values['timeout-ms']),
  };
  const modes: Record<Mode, () => Promise<void>> = {
    echo: () => listen(args.listen ?? '', serveEcho),
    sink: () => listen(args.listen ?? '', serveSink),
    connect: () => tryConnect(args),
    rtt: () => measureRtt(args),
    'echo-check': () => echoCheck(args),
    send: () => send(args),
    'http-get': () => httpGet(args),
  };
  const run = modes[mode as Mode];
  if (run === undefined) throw new Error(`unknown mode ${mode}: ${Object.keys(modes).join(', ')}`);
  await run();
}

/** The compiled script, for `ip netns exec NS node <TCP_PROBE> MODE ...`. */
export const TCP_PROBE = fileURLToPath(import.meta.url);

// As delay-relay.ts: a script only with arguments (the test runner runs it with none).
if (process.argv[1] === TCP_PROBE && process.argv.length > 2) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    process.stderr.write(`tcp-probe: ${error instanceof Error ? error.message : error}\n`);
    process.exit(2);
  });
}
