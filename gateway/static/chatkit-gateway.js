// placeholder: replaced by the browser helper
export {};
