#!/usr/bin/env node
// grpc-js interop client for duplex's bidi Chat service.
//
// Usage: node chat_client.js --addr HOST:PORT [--form package|bare]
//                            [--deadline-ms N] [--count N]
//
// Default (stdin) mode: each stdin line (trailing "\n" removed, nothing else)
// is written as one Msg on a single bidi call as soon as it arrives; replies
// are printed concurrently as "server: <echo text>". At EOF the call is
// half-closed (call.end()) and the client exits 0 after the call's 'end'.
//
// --count N: writes "m0".."m{N-1}" on one call, checks the replies are exactly
// "<<m0>>".."<<m{N-1}>>" in order, prints "ok N" and exits 0, otherwise
// prints the first mismatch and exits 1.
//
// Any RPC error prints "error: <STATUS_CODE_NAME>: <details>" on stderr and
// exits 2. --deadline-ms sets the deadline of the call.
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const { StringDecoder } = require('node:string_decoder');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const PROTO_FILES = {
  package: path.join(REPO_ROOT, 'proto', 'chat.proto'),
  bare: path.join(REPO_ROOT, 'interop', 'proto', 'bare', 'chat.proto'),
};

function loadChatService(form) {
  const def = protoLoader.loadSync(PROTO_FILES[form], {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const loaded = grpc.loadPackageDefinition(def);
  return form === 'package' ? loaded.chat.Chat : loaded.Chat;
}

function usage(msg) {
  process.stderr.write(`error: ${msg}\n` +
    'usage: node chat_client.js --addr HOST:PORT [--form package|bare] ' +
    '[--deadline-ms N] [--count N]\n');
  process.exit(64);
}

function statusName(code) {
  return Object.keys(grpc.status).find((k) => grpc.status[k] === code) || `CODE_${code}`;
}

// stdout/stderr are synchronous for files and pipes on Linux, so exiting right
// after a write loses nothing.
function exit(code) {
  process.exit(code);
}

function nonNegInt(name, value) {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n)) usage(`--${name} must be a non-negative integer`);
  return n;
}

function main() {
  let opts;
  try {
    opts = parseArgs({
      options: {
        addr: { type: 'string' },
        form: { type: 'string', default: 'package' },
        'deadline-ms': { type: 'string' },
        count: { type: 'string' },
      },
    }).values;
  } catch (e) {
    usage(e.message);
  }
  if (!opts.addr) usage('--addr is required');
  if (!(opts.form in PROTO_FILES)) usage(`--form must be package or bare, not ${opts.form}`);
  const deadlineMs = nonNegInt('deadline-ms', opts['deadline-ms']);
  const count = nonNegInt('count', opts.count);

  const Chat = loadChatService(opts.form);
  const client = new Chat(opts.addr, grpc.credentials.createInsecure());
  const callOpts = deadlineMs === undefined ? {} : { deadline: new Date(Date.now() + deadlineMs) };
  const call = client.Chat(callOpts);

  // grpc-js emits 'error' (non-OK status) in the same tick it ends the
  // readable side, so this runs before any 'end' handler.
  call.on('error', (err) => {
    process.stderr.write(`error: ${statusName(err.code)}: ${err.details}\n`);
    exit(2);
  });

  if (count === undefined) runStdin(call);
  else runCount(call, count);
}

function runStdin(call) {
  call.on('data', (echo) => process.stdout.write(`server: ${echo.text}\n`));
  call.on('end', () => exit(0));

  const decoder = new StringDecoder('utf8');
  let pending = '';
  process.stdin.on('data', (chunk) => {
    pending += decoder.write(chunk);
    let nl;
    while ((nl = pending.indexOf('\n')) !== -1) {
      call.write({ text: pending.slice(0, nl) });
      pending = pending.slice(nl + 1);
    }
  });
  process.stdin.on('end', () => {
    pending += decoder.end();
    if (pending !== '') call.write({ text: pending }); // last line without "\n"
    call.end();
  });
}

function runCount(call, n) {
  let got = 0;
  call.on('data', (echo) => {
    const want = `<<m${got}>>`;
    if (got >= n) {
      process.stdout.write(`mismatch: more than ${n} replies, extra ${JSON.stringify(echo.text)}\n`);
      exit(1);
    }
    if (echo.text !== want) {
      process.stdout.write(`mismatch at reply ${got}: want ${JSON.stringify(want)}, got ${JSON.stringify(echo.text)}\n`);
      exit(1);
    }
    got += 1;
  });
  call.on('end', () => {
    if (got !== n) {
      process.stdout.write(`mismatch: want ${n} replies, got ${got}\n`);
      exit(1);
    }
    process.stdout.write(`ok ${n}\n`);
    exit(0);
  });

  // Write with backpressure: pause on a full buffer, resume on 'drain'.
  let i = 0;
  const pump = () => {
    while (i < n) {
      const more = call.write({ text: `m${i}` });
      i += 1;
      if (!more) {
        call.once('drain', pump);
        return;
      }
    }
    call.end();
  };
  pump();
}

main();
