// Whether the page may act: false in the read-only mode, where the server refuses every
// action, so the page shows no action buttons.
import { createContext } from 'preact';
import { useContext } from 'preact/hooks';

export const CanAct = createContext(true);

export function useCanAct(): boolean {
  return useContext(CanAct);
}
