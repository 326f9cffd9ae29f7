'use strict'
// Runs the real megajs 1.3.10 for tests/mega_interop.rs.
//
// Reads `{ "ops": [ ... ] }` as JSON on stdin and prints `{ "results": [ ... ] }`, one result per
// op, in order. Only megajs's public exports are used (encrypt, decrypt, verify, File,
// MutableFile, Storage): every value comes out of the code paths megajs itself runs when it
// uploads, downloads, renames or logs in, not out of a re-implementation here.
//
// Test data is generated on both sides with megajs's own test rule (`testBuffer`: byte i is
// (start + i * step) % 255), so megabytes never cross stdin; large outputs come back as SHA-256,
// small ones also as hex.
//
// Ops:
//   encrypt  {key24, size, start, step, feed}  -> {mac, key, sha256, hex?}
//            megajs's upload cipher (`encrypt(key24)`): CTR + its MAC class.
//   decrypt  {key32, path, size, start, step, flip?} -> {ok, error?, sha256?, plain_ok?}
//            megajs's download cipher with MAC verification on, over ciphertext that the Rust
//            side wrote to `path`; `flip` XORs 0x01 into that byte first.
//   decrypt_range {key32, path, start, end} -> {sha256, hex?}
//            megajs's ranged download cipher (`decrypt(key32, {start})`, which seeks the CTR
//            counter and skips the MAC) over bytes start..end of the ciphertext file.
//   verify   {key32, size, start, step} -> {ok, error?}
//            megajs's `verify(key32)` over the plaintext.
//   attr_encrypt {key, attrs, directory} -> {at}
//            megajs's `MutableFile#setAttributes`, capturing the `a` request it sends.
//   attr_decrypt {key, at} -> {ok, attributes}
//            megajs's `File#decryptAttributes`.
//   login    {email, password, version, salt?, k} -> {user, uh, master}
//            `Storage#login` against a fake gateway (megajs's `fetch` option): answers `us0`
//            with the version (and salt), captures the `us` command, answers it with `k`, and
//            reports the master key megajs decrypted from `k` with the password key it derived.

const crypto = require('crypto')
const fs = require('fs')
const { Readable } = require('stream')
const mega = require('megajs')

const HEX_LIMIT = 4096

function testBuffer (size, start = 0, step = 1) {
  const buffer = Buffer.alloc(size)
  for (let i = 0; i < size; i++) buffer[i] = (start + i * step) % 255
  return buffer
}

function sha256 (buffer) {
  return crypto.createHash('sha256').update(buffer).digest('hex')
}

// Feeds `data` to `stream` in pieces of `feed` bytes (odd sizes make megajs re-align to 16-byte
// blocks itself, as it must with network reads) and collects what comes out.
function pipeThrough (stream, data, feed) {
  return new Promise((resolve, reject) => {
    const out = []
    stream.on('data', (d) => out.push(Buffer.from(d)))
    stream.on('error', reject)
    stream.on('end', () => resolve(Buffer.concat(out)))
    const pieces = []
    for (let i = 0; i < data.length; i += feed) {
      pieces.push(Buffer.from(data.subarray(i, i + feed)))
    }
    Readable.from(pieces).pipe(stream)
  })
}

async function opEncrypt (op) {
  const plain = testBuffer(op.size, op.start, op.step)
  const stream = mega.encrypt(Buffer.from(op.key24, 'hex'))
  const cipher = await pipeThrough(stream, plain, op.feed || 100003)
  const result = {
    mac: stream.mac.toString('hex'),
    key: stream.key.toString('hex'),
    size: cipher.length,
    sha256: sha256(cipher)
  }
  if (cipher.length <= HEX_LIMIT) result.hex = cipher.toString('hex')
  return result
}

async function opDecrypt (op) {
  const cipher = fs.readFileSync(op.path)
  if (typeof op.flip === 'number') cipher[op.flip] ^= 1
  const stream = mega.decrypt(Buffer.from(op.key32, 'hex'))
  try {
    const plain = await pipeThrough(stream, cipher, op.feed || 65537)
    const expected = testBuffer(op.size, op.start, op.step)
    return { ok: true, size: plain.length, plain_ok: plain.equals(expected), sha256: sha256(plain) }
  } catch (error) {
    return { ok: false, error: String(error.message || error) }
  }
}

async function opDecryptRange (op) {
  const cipher = fs.readFileSync(op.path).subarray(op.start, op.end)
  const stream = mega.decrypt(Buffer.from(op.key32, 'hex'), { start: op.start })
  const plain = await pipeThrough(stream, cipher, op.feed || 65537)
  const result = { size: plain.length, sha256: sha256(plain) }
  if (plain.length <= HEX_LIMIT) result.hex = plain.toString('hex')
  return result
}

async function opVerify (op) {
  const plain = testBuffer(op.size, op.start, op.step)
  const stream = mega.verify(Buffer.from(op.key32, 'hex'))
  try {
    await pipeThrough(stream, plain, op.feed || 100003)
    return { ok: true, mac: stream.mac.toString('hex') }
  } catch (error) {
    return { ok: false, error: String(error.message || error), mac: stream.mac && stream.mac.toString('hex') }
  }
}

// The parts of a logged-in Storage that MutableFile touches: node keys in `k` are stored under
// the owner's handle and unwrapped with `aes`; the identity unwrap lets us hand megajs the node
// key itself.
function fakeStorage (requests) {
  return {
    user: 'owner-handle',
    shareKeys: {},
    aes: { decryptECB: (b) => b, encryptECB: (b) => b },
    api: {
      request (json, cb) {
        requests.push(json)
        process.nextTick(() => cb(null, 0))
      }
    }
  }
}

async function opAttrEncrypt (op) {
  const requests = []
  const storage = fakeStorage(requests)
  const key = Buffer.from(op.key, 'hex')
  const file = new mega.MutableFile({
    h: 'AAAAAAAA',
    t: op.directory ? 1 : 0,
    k: `${storage.user}:${key.toString('base64url')}`
  }, storage)
  // No `a` was given, so megajs has no attributes yet; setAttributes merges into them.
  file.attributes = {}
  await file.setAttributes(op.attrs)
  const sent = requests.find((r) => r.a === 'a')
  return { at: sent.at, n: sent.n }
}

function opAttrDecrypt (op) {
  const file = new mega.File({ key: Buffer.from(op.key, 'hex'), directory: !!op.directory })
  const ok = file.decryptAttributes(op.at)
  return { ok: ok === true, attributes: ok === true ? file.attributes : null, name: file.name }
}

function jsonResponse (body) {
  return new Response(JSON.stringify(body), {
    status: 200,
    headers: { 'Content-Type': 'application/json' }
  })
}

// Logins end on purpose inside megajs (see opLogin) with a TypeError that megajs raises in a
// promise chain nobody awaits. Each login expects exactly one; anything else still kills the run.
let expectedLoginFailures = 0
process.on('unhandledRejection', (error) => {
  if (expectedLoginFailures > 0 && error instanceof TypeError) {
    expectedLoginFailures--
    return
  }
  process.stderr.write(`unhandled rejection: ${(error && error.stack) || error}\n`)
  process.exit(1)
})

function opLogin (op) {
  return new Promise((resolve, reject) => {
    const seen = {}
    let storage = null
    const fetch = async (url, opts) => {
      const [cmd] = JSON.parse(opts.body)
      if (cmd.a === 'us0') {
        seen.us0 = cmd
        return jsonResponse(op.version === 2 ? [{ v: 2, s: op.salt }] : [{ v: 1 }])
      }
      if (cmd.a === 'us') {
        seen.us = cmd
        // megajs decrypts `k` with the password key it derived into `storage.key`, then reads
        // `csid` and `privk`. Reading `csid` is our cue to report that key; the missing `privk`
        // then stops the login before any RSA is needed.
        expectedLoginFailures++
        const answer = {
          k: op.k,
          get csid () {
            resolve({
              user: seen.us.user,
              uh: seen.us.uh,
              us0_user: seen.us0.user,
              master: Buffer.from(storage.key).toString('hex')
            })
            return undefined
          }
        }
        return { ok: true, headers: new Headers(), json: async () => [answer] }
      }
      return jsonResponse([-11])
    }
    storage = new mega.Storage({
      email: op.email,
      password: op.password,
      keepalive: false,
      autoload: false,
      autologin: false,
      gateway: 'http://127.0.0.1:9/',
      fetch
    })
    storage.login().then(
      () => reject(Error('login unexpectedly succeeded')),
      (error) => reject(Error(`login failed before "us" was answered: ${error.message}`))
    )
  })
}

const OPS = {
  encrypt: opEncrypt,
  decrypt: opDecrypt,
  decrypt_range: opDecryptRange,
  verify: opVerify,
  attr_encrypt: opAttrEncrypt,
  attr_decrypt: opAttrDecrypt,
  login: opLogin
}

async function main () {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  const request = JSON.parse(Buffer.concat(chunks).toString('utf8'))
  // One op at a time: keeps memory low with megabyte buffers, and keeps each login's expected
  // failure paired with that login.
  const results = []
  for (const op of request.ops) {
    const run = OPS[op.op]
    if (!run) throw Error(`unknown op ${op.op}`)
    results.push(await run(op))
  }
  process.stdout.write(JSON.stringify({ results }))
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`)
  process.exit(1)
})
