// A real chatter gateway for the client's tests: the built binary in embedded mode
// (one process, SQLite in a temp dir), configured like tests/src/cluster.rs does.
//
// The binary: $CHATTER_GATEWAY_BIN, else $CARGO_TARGET_DIR/debug/chatter-gateway,
// else target/debug/chatter-gateway (scripts/test.sh builds it first).

import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

export function gatewayBinary() {
  if (process.env.CHATTER_GATEWAY_BIN) return process.env.CHATTER_GATEWAY_BIN;
  const target = process.env.CARGO_TARGET_DIR
    ? resolve(repo, process.env.CARGO_TARGET_DIR)
    : join(repo, 'target');
  const path = join(target, 'debug', 'chatter-gateway');
  if (!existsSync(path)) {
    throw new Error(`no gateway binary at ${path}: run \`cargo build -p chatter-gateway\` or set CHATTER_GATEWAY_BIN`);
  }
  return path;
}

/** A port the kernel just handed out (the gateway binds it with SO_REUSEADDR). */
export function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.on('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

/**
 * One embedded gateway on a fixed port, so that `restart()` brings it back at
 * the same URL with the same data (what a client sees when its server restarts).
 */
export class TestGateway {
  static async start(extraEnv = {}) {
    const gateway = new TestGateway();
    gateway.dir = mkdtempSync(join(tmpdir(), 'chatter-js-'));
    gateway.port = await freePort();
    gateway.url = `http://127.0.0.1:${gateway.port}`;
    gateway.serviceSecret = randomBytes(16).toString('hex');
    gateway.env = {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      HOST: '127.0.0.1',
      PORT: String(gateway.port),
      JWT_SECRET: randomBytes(32).toString('hex'),
      SERVICE_SECRET: gateway.serviceSecret,
      ALLOWED_ORIGINS: 'http://allowed.test',
      LOG_FORMAT: 'json',
      LOG_LEVEL: 'info',
      // SIGTERM closes sockets (4007) within a second rather than spread over 10 s.
      DRAIN_WINDOW_SECS: '1',
      ...extraEnv,
    };
    await gateway.spawn();
    return gateway;
  }

  spawn() {
    this.log = [];
    this.child = spawn(gatewayBinary(), [], {
      cwd: this.dir,
      env: this.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.exited = new Promise((ok) => this.child.once('exit', (code, signal) => ok({ code, signal })));
    return new Promise((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`gateway not ready in 30 s:\n${this.log.join('\n')}`)), 30000);
      const onLine = (line) => {
        this.log.push(line);
        if (line.includes('"listening"')) {
          clearTimeout(timer);
          ok();
        }
      };
      for (const stream of [this.child.stdout, this.child.stderr]) {
        let buffer = '';
        stream.setEncoding('utf8');
        stream.on('data', (chunk) => {
          buffer += chunk;
          let newline;
          while ((newline = buffer.indexOf('\n')) >= 0) {
            onLine(buffer.slice(0, newline));
            buffer = buffer.slice(newline + 1);
          }
        });
      }
      this.exited.then(({ code, signal }) => {
        clearTimeout(timer);
        fail(new Error(`gateway exited (${code ?? signal}) before it was ready:\n${this.log.join('\n')}`));
      });
    });
  }

  /** SIGTERM (drain: sockets get 4007) or SIGKILL, and wait for the exit. */
  async stop(signal = 'SIGTERM') {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill(signal);
    }
    await this.exited;
  }

  async restart(signal = 'SIGTERM') {
    await this.stop(signal);
    await this.spawn();
  }

  async close() {
    await this.stop('SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** A user JWT from `POST /tokens` (the service-secret route a backend would use). */
  async token(userId) {
    const answer = await fetch(`${this.url}/tokens`, {
      method: 'POST',
      headers: { authorization: `Bearer ${this.serviceSecret}`, 'content-type': 'application/json' },
      body: JSON.stringify({ user_id: userId, name: userId }),
    });
    if (!answer.ok) throw new Error(`POST /tokens: ${answer.status} ${await answer.text()}`);
    return (await answer.json()).token;
  }

  /**
   * A user JWT signed with the gateway's HS256 secret, carrying `roles`
   * (`POST /tokens` mints none: agents get theirs from the identity provider).
   */
  jwt(userId, roles = []) {
    const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
    const now = Math.floor(Date.now() / 1000);
    const unsigned = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub: userId, name: userId, roles, iat: now, exp: now + 3600 })}`;
    const signature = createHmac('sha256', this.env.JWT_SECRET).update(unsigned).digest('base64url');
    return `${unsigned}.${signature}`;
  }

  /** REST call as a user. */
  async api(method, path, token, body) {
    const headers = { authorization: `Bearer ${token}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const answer = await fetch(`${this.url}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await answer.text();
    return { status: answer.status, body: text ? JSON.parse(text) : null };
  }
}

/** Polls `check` until it returns truthy (or throws after `timeoutMs`). */
export async function until(what, check, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((ok) => setTimeout(ok, 20));
  }
}
