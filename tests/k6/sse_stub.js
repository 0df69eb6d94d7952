// A stand-in for the xk6-sse module (`k6/x/sse`) with the same shape, so
// that a stock k6, which lacks the extension, can `k6 inspect` scripts that
// import it: the whole module is parsed and its init context (options,
// scenarios, thresholds, environment checks) evaluated. k6/run.py swaps it
// in for the real import in a temporary copy of k6/. It cannot open streams.

export default {
  open() {
    throw new Error('k6/x/sse is stubbed for `k6 inspect`; build k6 with xk6-sse to run this script');
  },
};
