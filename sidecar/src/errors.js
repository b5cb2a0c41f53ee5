/** Errors with a kind the HTTP layer and the watch loop act on; messages never carry a secret. */
export class ChainError extends Error {
  /**
   * @param {'insufficient_funds' | 'transient' | 'permanent' | 'not_found'} kind
   * @param {string} message
   */
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}

/** Map an SDK / RPC error to a ChainError (the text is trimmed; keys never appear in SDK errors). */
export function classify(err) {
  if (err instanceof ChainError) return err;
  const msg = String(err?.message ?? err).slice(0, 300);
  if (/not enough sol|insufficient (funds|lamports)|custom program error: 0x1\b|prior credit/i.test(msg)) {
    return new ChainError('insufficient_funds', msg);
  }
  if (/account does not exist|could not find|invalid public key|non-base58/i.test(msg)) {
    return new ChainError('not_found', msg);
  }
  if (/cannot be (delisted|extended|ended)/i.test(msg)) return new ChainError('permanent', msg);
  return new ChainError('transient', msg);
}
